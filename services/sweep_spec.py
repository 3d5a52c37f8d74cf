"""The sweep schema and its pure expansion into member job documents (no DB, no I/O).

A sweep is a base job document plus the dotted paths it varies: a grid (every combination) and/or
``n`` random draws from a space. Expansion is a pure function of the request, so the API, the
scheduler and the tests agree on what member ``i`` is, and a resubmitted sweep yields the same
members. Each member is then validated as an ordinary job, and an error is reported at the sweep
field that caused it (a grid value, a random distribution, or the base).
"""

from __future__ import annotations

import gc
import itertools
import math
import re
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.errors import InvalidInput, ShapeMismatch
from services.examples import statquest_job
from services.spec import INT64_MAX, STEPS_MAX, Integer, JobCreate, Number, Strict, Text, check_json

Loc = tuple[str | int, ...]
Int64 = Annotated[Integer, Field(ge=-(2**63), le=INT64_MAX)]
MAX_PATHS = 64  # varied paths in one sweep (grid and random together)
MAX_MEMBERS = 2**31  # fixed ceiling; the setting max_sweep_members is what a deployment tunes
_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_KINDS = ("log_uniform", "uniform", "randint", "choice")
# Setting one side of a discriminated union of the job spec drops the other side, so that
# init.seed on a base with explicit parameters gives {"seed": v}, not an invalid mix of both.
_EXCLUSIVE = {
    ("init", "seed"): ("parameters",),
    ("init", "parameters"): ("seed",),
    ("data", "dataset_id"): ("x", "y"),
    ("data", "x"): ("dataset_id",),
    ("data", "y"): ("dataset_id",),
}


class Distribution(Strict):
    """Exactly one of the four keys. Bounds are checked here so that a draw can never fail."""

    log_uniform: tuple[Number, Number] | None = None
    uniform: tuple[Number, Number] | None = None
    randint: tuple[Int64, Int64] | None = None
    choice: list[Any] | None = Field(default=None, min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [kind for kind in _KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise InvalidInput((), f"give exactly one of {', '.join(_KINDS)}; got {', '.join(given) or 'none'}")
        low, high = self.log_uniform or self.uniform or self.randint or (0, 0)
        if self.log_uniform is not None and not 0 < low < high:
            raise InvalidInput(("log_uniform",), f"needs 0 < low < high, got [{low}, {high}]")
        if self.uniform is not None and not (low <= high and math.isfinite(high - low)):
            raise InvalidInput(("uniform",), f"needs low <= high and a finite width, got [{low}, {high}]")
        if self.randint is not None and not low <= high:
            raise InvalidInput(("randint",), f"needs low <= high, got [{low}, {high}]")
        check_json(self.choice, ("choice",))
        return self

    def sample(self, rng: np.random.Generator, n: int) -> list[Any]:
        """``n`` plain Python values (never NumPy scalars: they go into JSON documents)."""
        if self.log_uniform is not None:
            low, high = self.log_uniform
            return np.clip(np.exp(rng.uniform(math.log(low), math.log(high), n)), low, high).tolist()
        if self.uniform is not None:
            return np.clip(rng.uniform(*self.uniform, n), *self.uniform).tolist()
        if self.randint is not None:
            return rng.integers(*self.randint, n, endpoint=True).tolist()
        assert self.choice is not None
        return [self.choice[i] for i in rng.integers(0, len(self.choice), n).tolist()]


class RandomSpec(Strict):
    n: Integer = Field(ge=1, le=MAX_MEMBERS, json_schema_extra={"x-limit": "max_sweep_members"})
    seed: Integer = Field(default=0, ge=0, le=INT64_MAX)
    space: dict[str, Distribution] = Field(min_length=1, max_length=MAX_PATHS)


class SuccessiveHalving(Strict):
    type: Literal["successive_halving"]
    min_steps: Integer = Field(ge=1, le=STEPS_MAX, json_schema_extra={"x-limit": "max_steps"})
    reduction_factor: Integer = Field(default=3, ge=2, le=1024)


def _example() -> dict[str, Any]:
    """Three learning rates x two momentum draws of the StatQuest job: six members."""
    return {
        "name": "statquest-lr",
        "base": statquest_job(),
        "grid": {"learning_rate": [0.05, 0.1, 0.2]},
        "random": {"n": 2, "seed": 0, "space": {"momentum": {"uniform": [0.0, 0.9]}}},
        "early_stopping": {"type": "successive_halving", "min_steps": 2, "reduction_factor": 3},
    }


class SweepCreate(Strict):
    """The POST /v1/sweeps body. ``base`` stays a raw document: it is validated per member, as
    a varied value may be what makes it valid (or invalid)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_example()]})

    name: Text = Field(default="sweep", min_length=1, max_length=200)
    base: dict[str, Any] = Field(description="Any job spec (POST /v1/jobs); members vary it")
    grid: dict[str, Annotated[list[Any], Field(min_length=1, max_length=MAX_MEMBERS,
                                                json_schema_extra={"x-limit": "max_sweep_members"})]] | None = Field(
        default=None, max_length=MAX_PATHS)
    random: RandomSpec | None = None
    early_stopping: SuccessiveHalving | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """The base and the grid values are stored as given: only what storage takes (checked
        before pydantic reads a key, as a lone surrogate in a dict key makes it raise)."""
        if isinstance(data, dict):
            check_json(data)
        return data

    @model_validator(mode="after")
    def _paths(self) -> SweepCreate:
        """At most ``MAX_PATHS`` paths in all, each naming a job field, varied in one place only,
        and no path lies inside another (setting ``a`` and then ``a.b`` would depend on the order
        and could write into a grid value)."""
        _check_path_count(self)
        seen: list[str] = []
        for loc, path in _path_locs(self):
            if not _PATH.fullmatch(path):
                raise InvalidInput(loc, "must be a dotted name of letters, digits and underscores")
            _check_known(loc, path)
            if path in seen:
                raise InvalidInput(loc, f"{path!r} is also in grid; vary a path in one place only")
            for other in seen:
                if path.startswith(other + ".") or other.startswith(path + "."):
                    raise InvalidInput(loc, f"{path!r} overlaps {other!r}; one varied path may not lie inside another")
            seen.append(path)
        return self


@dataclass(frozen=True)
class Member:
    """One job of a sweep. ``values`` maps each varied path to its (plain JSON) value."""

    index: int
    values: dict[str, Any]
    document: dict[str, Any]


def _path_locs(sweep: SweepCreate) -> list[tuple[Loc, str]]:
    grid = [(("grid", path), path) for path in sweep.grid or {}]
    space = [(("random", "space", path), path) for path in (sweep.random.space if sweep.random else {})]
    return [*grid, *space]


def _check_path_count(sweep: SweepCreate) -> None:
    """``MAX_PATHS`` bounds grid and random together; each side's own ``max_length`` already
    holds it alone, so an excess is the random space's (as ``random.n`` is blamed for members)."""
    grid = len(sweep.grid or {})
    space = len(sweep.random.space) if sweep.random else 0
    if grid + space > MAX_PATHS:
        raise InvalidInput(("random", "space"), f"{grid} grid paths + {space} random paths: {grid + space} varied "
                                                f"paths exceed the limit of {MAX_PATHS} (grid and random together)")


def _check_known(loc: Loc, path: str) -> None:
    """Each key of ``path`` must be a field of the job schema, as far as the schema has named
    fields: an unknown one is refused at the path itself, rather than per member as an extra
    input inside a grid value. Below a list, a number or free-form JSON, member validation
    judges the value."""
    keys = path.split(".")
    models: tuple[type[BaseModel], ...] = (JobCreate,)
    for depth, key in enumerate(keys):
        fields = {name: field.annotation for model in models for name, field in model.model_fields.items()}
        if key not in fields:
            inside = f" in {'.'.join(keys[:depth])!r}" if depth else ""
            raise InvalidInput(loc, f"unknown field {key!r}{inside}; known: {', '.join(sorted(fields))}")
        models = _object_models(fields[key])
        if not models:
            return


def _object_models(annotation: Any) -> tuple[type[BaseModel], ...]:
    """The models a field holds (a model, or a union of models such as ``data`` and ``init``,
    optionally None); empty when any alternative is not a model, as its keys are not fields."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = [option for option in (typing.get_args(annotation) if union else (annotation,))
               if option is not type(None)]
    if all(isinstance(option, type) and issubclass(option, BaseModel) for option in options):
        return tuple(options)
    return ()


def varied_paths(sweep: SweepCreate) -> list[str]:
    """Grid paths then random paths, in request order: the columns of a sweep's result table."""
    return [path for _, path in _path_locs(sweep)]


def member_count(sweep: SweepCreate) -> int:
    """Computed from the lengths alone, so an oversized sweep is refused before anything is built."""
    return _grid_points(sweep) * (sweep.random.n if sweep.random else 1)


def check_count(sweep: SweepCreate, max_members: int, limit_name: str = "") -> None:
    """At most ``max_members`` members (``limit_name`` says which limit that is, e.g. the
    tenant's queued jobs); the error is located by ``count_loc``."""
    count = member_count(sweep)
    if count <= max_members:
        return
    limit = f"{count} members exceed the limit of {max_members}{limit_name}"
    if sweep.random is not None:
        limit = f"{_grid_points(sweep)} grid points x {sweep.random.n} draws: {limit}"
    raise InvalidInput(count_loc(sweep, max_members), limit)


def count_loc(sweep: SweepCreate, max_members: int) -> Loc:
    """The field that makes a sweep too many members for ``max_members``: ``random.n`` when
    the grid alone would fit, the grid otherwise."""
    if sweep.random is not None and _grid_points(sweep) <= max_members:
        return ("random", "n")
    return ("grid",)


def _grid_points(sweep: SweepCreate) -> int:
    return math.prod(len(values) for values in (sweep.grid or {}).values())


def draws(random: RandomSpec) -> list[dict[str, Any]]:
    """The ``n`` random draws, a pure function of (seed, space).

    Each path gets its own stream spawned from ``default_rng(seed)`` in space order, so draw
    ``i`` is the same whatever ``n`` is: raising ``n`` only appends members.
    """
    streams = np.random.default_rng(random.seed).spawn(len(random.space))
    columns = {path: dist.sample(rng, random.n) for (path, dist), rng in zip(random.space.items(), streams)}
    return [{path: column[i] for path, column in columns.items()} for i in range(random.n)]


def expand(sweep: SweepCreate, max_members: int) -> list[Member]:
    """Every grid point (last key fastest) combined with each random draw (draw inner).

    Documents share the base's unchanged subtrees with each other (a 10k-member sweep over a
    large inline data set must not copy the data 10k times): treat them as read-only below the
    top level. The base itself is never modified.
    """
    check_count(sweep, max_members)
    grid = sweep.grid or {}
    random_draws = draws(sweep.random) if sweep.random else [{}]
    members: list[Member] = []
    for point in itertools.product(*grid.values()):
        for draw in random_draws:
            values = dict(zip(grid, point)) | draw
            members.append(Member(len(members), values, _document(sweep, len(members), values)))
    return members


def _document(sweep: SweepCreate, index: int, values: dict[str, Any]) -> dict[str, Any]:
    document = dict(sweep.base)
    try:
        for path, value in values.items():
            set_path(document, path, value)
    except InvalidInput as exc:  # intermediates come from the base (varied paths never nest)
        raise InvalidInput(("base", *exc.loc), exc.message) from None
    if "name" not in values:
        suffix = f"-{index}"
        document["name"] = sweep.name[: 200 - len(suffix)] + suffix
    return document


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in ``doc``, creating missing objects on the way.

    Every object along the path is copied before it is changed, so subtrees ``doc`` shares with
    another document are never modified. Setting one side of the spec's ``init``/``data`` unions
    drops the other side (see ``_EXCLUSIVE``).
    """
    keys = path.split(".")
    node = doc
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key, {})
        if not isinstance(child, dict):
            raise InvalidInput(tuple(keys[: depth + 1]), f"is not an object, so {path!r} cannot be set")
        child = dict(child)
        node[key] = child
        node = child
    node[keys[-1]] = value
    if len(keys) > 1:
        for other in _EXCLUSIVE.get((keys[0], keys[1]), ()):
            doc[keys[0]].pop(other, None)


def validate_members(sweep: SweepCreate, members: Sequence[Member]) -> list[JobCreate]:
    """Validate each member as a job; the first failure is reported at the sweep field behind it.

    The caller still applies ``check_limits`` to each spec (it needs the settings).
    """
    specs: list[JobCreate] = []
    with _gc_paused():
        for member in members:
            try:
                specs.append(JobCreate.model_validate(member.document))
            except (ValidationError, InvalidInput) as exc:
                raise member_error(sweep, member, exc) from exc
    return specs


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Validation builds ~40 long-lived containers per member and no garbage cycles; with the
    collector on, its repeated rescans of them took 10k members from 0.17 s to 0.48 s."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def member_error(sweep: SweepCreate, member: Member, exc: ValidationError | InvalidInput) -> InvalidInput:
    """``exc`` (raised for ``member``'s job) located at the sweep field behind it: data that does
    not fit a member's varied layers is the layers' fault, not the base's."""
    loc, message = _job_error(exc)
    paths = varied_paths(sweep)
    path = _blamed_path(paths, loc)
    shape = _cause(exc)
    if path is None and isinstance(shape, ShapeMismatch):
        other = (*_model_loc(exc), *shape.layers_loc)
        if (blamed := _blamed_path(paths, other)) is not None:
            loc, path = other, blamed
    if path is None:
        return InvalidInput(("base", *loc), message)
    positions, draw = _coordinates(sweep, member.index)
    if path in positions:
        below = loc[len(path.split(".")):]  # e.g. the bad element of a grid list value
        return InvalidInput(("grid", path, positions[path], *below), f"member {member.index}: {message}")
    return InvalidInput(("random", "space", path), f"member {member.index} (draw {draw}): {message}")


# The job fields a member's training cost depends on (parameters x points x steps), in the
# order they are blamed: steps first, the knob a client turns first (as for a single job).
COST_FIELDS: tuple[Loc, ...] = (("stop", "max_steps"), ("architecture", "layers"), ("data",))


def cost_error(sweep: SweepCreate, members: Sequence[Member], costs: Sequence[float], max_cost: float,
               exc: InvalidInput) -> InvalidInput:
    """``exc`` (the sweep's summed cost is over ``max_cost``) located at what drives the cost.

    When steps, layers or data are varied, the costliest member's value of the first varied one
    is blamed (a grid value or a distribution, as ``member_error`` locates them). Otherwise every
    member costs the same: the member count is blamed when fewer members would fit, the base
    when not even one does.
    """
    paths = varied_paths(sweep)
    costliest = max(range(len(members)), key=costs.__getitem__)
    for field in COST_FIELDS:
        if _blamed_path(paths, field) is not None:
            return member_error(sweep, members[costliest], InvalidInput(field, exc.message))
    fitting = int(max_cost // costs[costliest])
    if fitting >= 1:
        return InvalidInput(count_loc(sweep, fitting), exc.message)
    stop = sweep.base.get("stop")
    given = isinstance(stop, dict) and "max_steps" in stop
    return InvalidInput(("base", "stop", "max_steps") if given else ("base",), exc.message)


def check_early_stopping(sweep: SweepCreate, specs: Sequence[JobCreate], max_steps: int) -> None:
    """``min_steps`` within the ``max_steps`` setting (the schema's bound is only the storage
    ceiling), and below some member's ``stop.max_steps``: otherwise no member is still training
    at the first rung, and halving never cuts anything."""
    rule = sweep.early_stopping
    if rule is None:
        return
    loc: Loc = ("early_stopping", "min_steps")
    if rule.min_steps > max_steps:
        raise InvalidInput(loc, f"exceeds the limit of {max_steps}")
    longest = max(spec.stop.max_steps for spec in specs)
    if rule.min_steps >= longest:
        raise InvalidInput(loc, f"{rule.min_steps} is not below any member's stop.max_steps (the largest is "
                                f"{longest}): no member trains past the first rung, so halving would never cut")


def _job_error(exc: ValidationError | InvalidInput) -> tuple[Loc, str]:
    """The first error's field path in the job document and its message.

    An ``InvalidInput`` raised in a model validator arrives wrapped, located at the model; its
    own ``loc`` continues the path.
    """
    if isinstance(exc, InvalidInput):
        return exc.loc, exc.message
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    if (cause := _cause(exc)) is not None:
        return (*loc, *cause.loc), cause.message
    return loc, error["msg"]


def _model_loc(exc: ValidationError | InvalidInput) -> Loc:
    """Where the model whose validator raised lies in the job document (``("data",)`` for
    inline data); empty for an ``InvalidInput`` raised outside pydantic."""
    return tuple(exc.errors(include_url=False)[0]["loc"]) if isinstance(exc, ValidationError) else ()


def _cause(exc: ValidationError | InvalidInput) -> InvalidInput | None:
    """The ``InvalidInput`` itself, raised directly or inside a model validator."""
    if isinstance(exc, InvalidInput):
        return exc
    cause = (exc.errors(include_url=False)[0].get("ctx") or {}).get("error")
    return cause if isinstance(cause, InvalidInput) else None


def _blamed_path(paths: list[str], loc: Loc) -> str | None:
    """The varied path that ``loc`` lies in, or that lies in ``loc`` (an object it replaced)."""
    keys = tuple(map(str, loc))
    for path in paths:
        parts = tuple(path.split("."))
        common = min(len(parts), len(keys))
        if keys and parts[:common] == keys[:common]:
            return path
    return None


def _coordinates(sweep: SweepCreate, index: int) -> tuple[dict[str, int], int]:
    """A member's position in each grid list and its draw, recovered from its index."""
    point, draw = divmod(index, sweep.random.n if sweep.random else 1)
    positions: dict[str, int] = {}
    for path, values in reversed(list((sweep.grid or {}).items())):
        point, positions[path] = divmod(point, len(values))
    return positions, draw


# --- read models ------------------------------------------------------------------------------

SweepStatus = Literal["queued", "running", "finished", "cancelled"]


class LeaderEntry(BaseModel):
    job_id: str
    ssr: float | None
    step: int
    status: str
    stop_reason: str | None
    values: dict[str, Any]


class SweepRead(BaseModel):
    id: str
    name: str
    status: SweepStatus
    created_at: datetime
    finished_at: datetime | None = None  # when its last member finished (set by the scheduler)
    members: int
    paths: list[str]
    early_stopping: SuccessiveHalving | None = None
    counts: dict[str, int]
    stop_reasons: dict[str, int]
    steps_done: int
    steps_planned: int
    best: LeaderEntry | None
    leaderboard: list[LeaderEntry]


class SweepPage(BaseModel):
    items: list[SweepRead]
    next_cursor: str | None
