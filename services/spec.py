"""The job spec: one schema shared by API validation and workers, plus the read models.

Validation that needs only the spec lives in validators here; checks against configured limits
live in ``check_limits`` (it needs the settings) and checks against a stored dataset happen when
the dataset is loaded (``check_data_shape``). All raise errors whose location names the field,
as a path in the client's JSON (``data.x.3.0``: never the name of an internal variant); a stored
dataset's faults are located at the ``data.dataset_id`` that names it.

Types are strict: a number is a JSON number (an integer is one too), an integer is an integer,
text is valid Unicode without NUL; strings never pass for numbers, nor booleans for either.
Every size has an upper bound: a fixed one in the schema (what the storage and the engine can
represent) and, where a deployment would tune it, a setting checked by ``check_limits``; the
setting is named in the schema as ``x-limit`` and the API's OpenAPI document shows its value.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from services.config import Settings
from services.engine import Architecture
from services.errors import InvalidInput, ShapeMismatch
from services.examples import statquest_job

Activation = Literal["identity", "relu", "softplus", "sigmoid", "tanh"]
JobStatus = Literal["queued", "running", "succeeded", "diverged", "failed", "cancelled"]
FINISHED = ("succeeded", "diverged", "failed", "cancelled")

INT64_MAX = 2**63 - 1
STEPS_MAX = 2**31 - 1  # steps are int32 in the database (jobs.step, checkpoints.step)
MAX_LAYERS = 64  # fixed ceilings; the settings (max_layers, ...) are what a deployment tunes
MAX_WIDTH = 2**20
MAX_TEXT_JSON_DEPTH = 32  # nesting of free-form JSON (a sweep's base, its grid values)
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # ids are UUIDs; the API's path parameters take this too
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a float32 job's numbers beyond it become infinite
BEYOND_FLOAT32 = "exceeds the float32 range (±3.4e38)"


def _limit(setting: str) -> dict[str, Any]:
    """Schema annotation naming the setting that bounds a value (``api.docs`` fills it in)."""
    return {"x-limit": setting}


def _valid_text(value: str) -> str:
    """Storage takes valid Unicode only: no lone surrogates (``"\\ud800"`` is valid JSON), no NUL."""
    if "\x00" in value:
        raise PydanticCustomError("string_nul", "Text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("string_unicode", "Text must be valid Unicode (no lone surrogates)") from None
    return value


Number = Annotated[float, Field(strict=True)]
"""A finite JSON number (models refuse NaN/Infinity); never a string or a boolean."""
Integer = Annotated[int, Field(strict=True)]
"""A JSON integer: ``1.0``, ``"1"`` and ``true`` are refused."""
Text = Annotated[str, AfterValidator(_valid_text)]
Matrix = list[list[Number]]
Row = Annotated[list[Number], Field(min_length=1, max_length=MAX_WIDTH)]
Points = Annotated[list[Row], Field(min_length=1, json_schema_extra=_limit("max_points"))]
"""One row of numbers per point (the rows' lengths are checked against each other and the layers)."""


class Strict(BaseModel):
    """Unknown fields and NaN/Infinity are input errors, never silently accepted."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ArchitectureSpec(Strict):
    layers: list[Annotated[Integer, Field(ge=1, le=MAX_WIDTH, json_schema_extra=_limit("max_layer_width"))]] = Field(
        min_length=2, max_length=MAX_LAYERS, json_schema_extra=_limit("max_layers"),
        description="Widths [n_in, hidden..., n_out]")
    activation: Activation = "relu"
    output_activation: Activation = "identity"

    def to_engine(self) -> Architecture:
        return Architecture(tuple(self.layers), self.activation, self.output_activation)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.to_engine().parameter_shapes()


class InlineData(Strict):
    x: Points
    y: Points

    @model_validator(mode="after")
    def _rectangular(self) -> "InlineData":
        check_pairs(self.x, self.y)
        return self


class DatasetRef(Strict):
    dataset_id: str = Field(pattern=ID_PATTERN, description="The id POST /v1/datasets answered")


class LayerParameters(Strict):
    weight: Annotated[Matrix, Field(max_length=MAX_WIDTH)]
    bias: Annotated[list[Number], Field(max_length=MAX_WIDTH)]


class ParameterValues(Strict):
    layers: list[LayerParameters] = Field(min_length=1, max_length=MAX_LAYERS)


class ExplicitInit(Strict):
    parameters: ParameterValues


class SeedInit(Strict):
    seed: Integer = Field(ge=0, le=INT64_MAX)


class StopSpec(Strict):
    max_steps: Integer = Field(default=1000, ge=0, le=STEPS_MAX, json_schema_extra=_limit("max_steps"))
    min_step_size: Number = Field(default=0.0, ge=0)
    target_ssr: Number | None = Field(default=None, ge=0)


def _one_of(key: str, keyed: type[Strict], other: type[Strict], expected: str):  # noqa: ANN202
    """Validate an object as ``keyed`` when it has ``key``, else as ``other``, so an error is
    located at the client's own field (``data.x.3.0``), not at a union variant's name."""

    def validate(value: Any) -> Any:
        if isinstance(value, (keyed, other)):
            return value
        if not isinstance(value, dict):
            raise PydanticCustomError("model_type", "Input should be an object: {expected}", {"expected": expected})
        return (keyed if key in value else other).model_validate(value)

    return validate


DataSpec = Annotated[
    InlineData | DatasetRef,
    BeforeValidator(_one_of("dataset_id", DatasetRef, InlineData, '{"x", "y"} or {"dataset_id"}')),
]
InitSpec = Annotated[
    SeedInit | ExplicitInit,
    BeforeValidator(_one_of("seed", SeedInit, ExplicitInit, '{"seed"} or {"parameters"}')),
]


ParameterName = Annotated[Text, Field(max_length=64)]


def _some_parameters(value: Any) -> Any:
    """An empty ``trainable`` would train nothing (the job would end at step 0); absent or null
    means every parameter. Checked before the list's ``min_length`` for a message that says so."""
    if isinstance(value, list) and not value:
        raise PydanticCustomError(
            "too_short", "must name at least one parameter; leave it out (or null) to train all of them")
    return value


class JobCreate(Strict):
    """The POST /v1/jobs body (the StatQuest example: b3 trained from 0 to 2.61)."""

    model_config = ConfigDict(json_schema_extra={"examples": [statquest_job()]})

    name: Text = Field(default="job", min_length=1, max_length=200)
    architecture: ArchitectureSpec
    data: DataSpec
    learning_rate: Number = Field(gt=0)
    init: InitSpec = SeedInit(seed=0)
    trainable: Annotated[list[ParameterName] | None, BeforeValidator(_some_parameters)] = Field(
        default=None, min_length=1, max_length=2 * MAX_LAYERS,
        description="Parameter names (layers.{i}.weight, layers.{i}.bias); all if absent")
    stop: StopSpec = StopSpec()
    checkpoint_every: Integer = Field(default=100, ge=1, le=STEPS_MAX, json_schema_extra=_limit("max_checkpoint_every"))
    device: Literal["cpu", "gpu"] = "cpu"
    batch_size: Integer | None = Field(default=None, ge=1, le=INT64_MAX, json_schema_extra=_limit("max_points"))
    momentum: Number = Field(default=0.0, ge=0, lt=1)
    dtype: Literal["float64", "float32"] = "float64"

    @model_validator(mode="after")
    def _consistent(self) -> "JobCreate":
        shapes = self.architecture.parameter_shapes()
        if isinstance(self.init, ExplicitInit):
            check_parameters(self.init.parameters, shapes, ("init", "parameters", "layers"))
        for i, name in enumerate(self.trainable or []):
            if name not in shapes:
                raise InvalidInput(("trainable", i), f"unknown parameter {name!r}; known: {sorted(shapes)}")
        if isinstance(self.data, InlineData):
            check_data_shape(self, len(self.data.x[0]), len(self.data.y[0]))
        if self.dtype == "float32":
            self._check_float32_range()
        return self

    def _check_float32_range(self) -> None:
        """A float32 job casts its numbers to float32 before step 0: one beyond its range
        becomes infinite and the job "diverges" at once, so it is refused here, at the element."""
        if isinstance(self.init, ExplicitInit):
            for i, layer in enumerate(self.init.parameters.layers):
                check_float32_range(layer.weight, ("init", "parameters", "layers", i, "weight"))
                check_float32_range(layer.bias, ("init", "parameters", "layers", i, "bias"))
        if isinstance(self.data, InlineData):
            check_float32_range(self.data.x, ("data", "x"))
            check_float32_range(self.data.y, ("data", "y"))


def check_float32_range(values: list[float] | Matrix, loc: tuple[str | int, ...]) -> None:
    """Refuse the first element (a vector or a rectangular matrix) beyond float32's range."""
    beyond = np.argwhere(np.abs(np.asarray(values, dtype=np.float64)) > FLOAT32_MAX)
    if len(beyond):
        raise InvalidInput((*loc, *map(int, beyond[0])), BEYOND_FLOAT32)


def check_matrix(rows: list[list[float]], loc: tuple[str | int, ...]) -> None:
    """Ragged rows would silently become object arrays; refuse them here."""
    width = len(rows[0])
    if width == 0:
        raise InvalidInput(loc, "rows must not be empty")
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidInput((*loc, i), f"row has {len(row)} values, expected {width}")


def check_pairs(x: Matrix, y: Matrix) -> None:
    """x and y must be rectangular and have one row per data point each."""
    check_matrix(x, ("x",))
    check_matrix(y, ("y",))
    if len(x) != len(y):
        # x is the other side: a sweep that varies data.x, not data.y, blames its value there.
        raise ShapeMismatch(("y",), f"x has {len(x)} rows but y has {len(y)}", ("x",))


def check_parameters(values: ParameterValues, shapes: dict[str, tuple[int, ...]], loc: tuple) -> None:
    n_layers = len(shapes) // 2
    if len(values.layers) != n_layers:
        raise InvalidInput(loc, f"{len(values.layers)} layers given, architecture has {n_layers}")
    for i, layer in enumerate(values.layers):
        out, inp = shapes[f"layers.{i}.weight"]
        if len(layer.weight) != out or any(len(r) != inp for r in layer.weight):
            raise InvalidInput((*loc, i, "weight"), f"must be {out}x{inp} (out x in)")
        if len(layer.bias) != out:
            raise InvalidInput((*loc, i, "bias"), f"must have {out} values, got {len(layer.bias)}")


def data_loc(spec: JobCreate, part: Literal["x", "y"]) -> tuple[str, ...]:
    """Where a fault of the job's data ``x`` or ``y`` is: in the request's own rows when they
    are inline, else at the ``dataset_id`` that names them (the request has no ``data.x``)."""
    return ("data", part) if isinstance(spec.data, InlineData) else ("data", "dataset_id")


def _rows(spec: JobCreate, part: Literal["x", "y"]) -> str:
    return "rows" if isinstance(spec.data, InlineData) else f"the dataset's {part} rows"


def check_data_shape(spec: JobCreate, n_in: int, n_out: int) -> None:
    layers = spec.architecture.layers
    if n_in != layers[0]:
        raise ShapeMismatch(data_loc(spec, "x"), f"{_rows(spec, 'x')} have {n_in} values but layers[0] is {layers[0]}",
                            ("architecture", "layers", 0))
    if n_out != layers[-1]:
        raise ShapeMismatch(data_loc(spec, "y"),
                            f"{_rows(spec, 'y')} have {n_out} values but layers[-1] is {layers[-1]}",
                            ("architecture", "layers", len(layers) - 1))


def check_limits(spec: JobCreate, settings: Settings, n_points: int | None = None) -> None:
    """Limits are settings, so they are checked here rather than in the static schema."""
    layers = spec.architecture.layers
    if len(layers) > settings.max_layers:
        raise InvalidInput(("architecture", "layers"), f"at most {settings.max_layers} layers allowed")
    for i, width in enumerate(layers):
        if width > settings.max_layer_width:
            raise InvalidInput(("architecture", "layers", i), f"width {width} exceeds {settings.max_layer_width}")
    n_params = sum(a * b + b for a, b in zip(layers, layers[1:]))
    if n_params > settings.max_parameters:
        raise InvalidInput(("architecture", "layers"), f"{n_params} parameters exceed {settings.max_parameters}")
    if spec.stop.max_steps > settings.max_steps:
        raise InvalidInput(("stop", "max_steps"), f"exceeds the limit of {settings.max_steps}")
    if spec.checkpoint_every > settings.max_checkpoint_every:
        raise InvalidInput(("checkpoint_every",), f"exceeds the limit of {settings.max_checkpoint_every}")
    points = len(spec.data.x) if isinstance(spec.data, InlineData) else n_points
    if points is not None and points > settings.max_points:
        raise InvalidInput(data_loc(spec, "x"), f"{points} points exceed the limit of {settings.max_points}")
    if spec.batch_size is not None and spec.batch_size > min(points or settings.max_points, settings.max_points):
        known = f"the {points} data points" if points is not None else f"the limit of {settings.max_points} points"
        raise InvalidInput(("batch_size",), f"{spec.batch_size} exceeds {known}")


def check_json(value: Any, loc: tuple[str | int, ...] = (), depth: int = 0) -> None:
    """A free-form JSON value (a sweep's base, a grid value) holds only what storage takes:
    finite numbers, valid text, at most ``MAX_TEXT_JSON_DEPTH`` levels of nesting."""
    if depth > MAX_TEXT_JSON_DEPTH:
        raise InvalidInput(loc, f"nested more than {MAX_TEXT_JSON_DEPTH} levels deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(loc, "numbers must be finite")
    if isinstance(value, str):
        _checked_text(value, loc)
    elif isinstance(value, dict):
        for key, item in value.items():
            _checked_text(key, (*loc, key[:100]))
            check_json(item, (*loc, key), depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json(item, (*loc, i), depth + 1)


def _checked_text(value: str, loc: tuple[str | int, ...]) -> None:
    try:
        _valid_text(value)
    except PydanticCustomError as exc:
        raise InvalidInput(loc, exc.message()) from None


class DatasetCreate(Strict):
    """The POST /v1/datasets JSON body."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [0.0]]}]})

    x: Points
    y: Points

    @model_validator(mode="after")
    def _rectangular(self) -> "DatasetCreate":
        check_pairs(self.x, self.y)
        return self


class DatasetRead(BaseModel):
    id: str
    content_hash: str
    n_points: int
    n_in: int
    n_out: int
    created_at: datetime


class WorkerInfo(BaseModel):
    hostname: str | None = None
    pid: int | None = None


class JobRead(BaseModel):
    id: str
    name: str
    status: JobStatus
    step: int
    ssr: float | None = Field(description="SSR at `step`; null before the first step or if not finite (diverged)")
    stop_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    worker: WorkerInfo
    device: str
    sweep_id: str | None = None
    sweep_values: dict[str, Any] | None = None  # a sweep member's varied values
    rung: int | None = None  # successive halving: the rung step it waits at for the sweep's cut
    error: str | None = None
    cancel_requested: bool = Field(
        default=False, description="A cancel was asked while it ran: it stops at its next checkpoint")
    max_steps: int | None = Field(default=None, description="The spec's stop.max_steps: progress is step / max_steps")
    queue_workers: int | None = Field(
        default=None, description="A job waiting for a worker (queued, not at a rung; in reads of jobs): live "
        "workers serving its device's queue. 0: none runs, and it waits until one starts (e.g. no gpu worker)")


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class HistoryRead(BaseModel):
    steps: list[int]
    ssr: list[float | None] = Field(description="SSR at each step; null where it was not finite (diverged)")


class ParametersRead(BaseModel):
    step: int
    layers: list[LayerParameters]
    checkpoint_steps: list[int] = Field(default_factory=list,
                                        description="Every step with a stored checkpoint, ascending")


class PredictRequest(Strict):
    """The POST /v1/jobs/{id}/predict body: one row per point, as many values as layers[0]."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"x": [[0.0], [0.5], [1.0]]}]})

    x: Points


class PredictRead(BaseModel):
    """Finite numbers only: an output that overflows is a 422 naming the input row."""

    model_config = ConfigDict(allow_inf_nan=False)

    y: list[list[float]]
