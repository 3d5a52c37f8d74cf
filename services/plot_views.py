"""What a picture needs, read from stored checkpoints and history only (no drawing here).

``job_view`` and ``sweep_view`` return frozen values that ``services.plots`` draws. Every
size is bounded whatever the job: a history is thinned to ``MAX_POINTS``; two checkpoints are
read (the first and the latest), or up to ``MAX_CHECKPOINTS`` (and ``CHECKPOINT_BYTES``) for
the single-parameter picture; at most ``MAX_DATA_POINTS`` data points are drawn; forward passes
and replays stay within ``PREDICT_BUDGET`` and ``REPLAY_BUDGET``; a sweep overlays at most
``MAX_CURVES`` members' curves.

A job that trains a single scalar (the StatQuest lesson's b3) gets the lesson's picture: SSR as
a function of that parameter, the others held at their stored values, with the descent's steps
on it. Checkpoints store parameters only every ``checkpoint_every`` steps, but with one trained
scalar the value at every step in between follows from the stored state: each step is replayed
with the engine (``b_{k+1} = b_k - lr * dSSR/db_k``, momentum and mini-batches as trained) from
the checkpoint before it. The replay is accepted only if it lands on every stored checkpoint's
value and reproduces the stored SSR history; otherwise (or beyond ``MAX_REPLAY_STEPS`` or
``REPLAY_BUDGET``) the picture marks the stored checkpoints alone and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from services import engine
from services.db import repository
from services.db import sweeps as store
from services.db.models import DEFAULT_TENANT
from services.db.session import session_scope
from services.jobs import thin_to
from services.spec import JobCreate, JobRead, SeedInit
from services.sweeps import sweep_status

MAX_POINTS = 2000            # SSR points per curve
MAX_CHECKPOINTS = 200        # checkpoints read for one picture (one trained scalar; else 2)
CHECKPOINT_BYTES = 64e6      # and at most about this many bytes of them
MAX_DATA_POINTS = 2000       # data points drawn
MAX_REPLAY_STEPS = 5000      # per-step replay of a single trained scalar, at most this many steps
REPLAY_BUDGET = 1e8          # and at most about this many multiply-adds (steps x points x parameters)
MAX_MARKS = 200              # steps marked on the SSR(parameter) curve
MAX_CURVES = 40              # sweep members whose SSR curves are overlaid
CURVE_POINTS = 200           # values of x (fit) and of the parameter (SSR curve)
PREDICT_BUDGET = 2e7         # multiply-adds of one forward pass of a whole curve, about
# The video's names of the [1, 2, 1] network's parameters.
_LESSON_NAMES = {
    ("layers.0.weight", (0, 0)): "w1", ("layers.0.weight", (1, 0)): "w2",
    ("layers.0.bias", (0,)): "b1", ("layers.0.bias", (1,)): "b2",
    ("layers.1.weight", (0, 0)): "w3", ("layers.1.weight", (0, 1)): "w4", ("layers.1.bias", (0,)): "b3",
}


@dataclass(frozen=True)
class Fit:
    """A one-input, one-output network against its data. x, y: (P,) data (at most
    MAX_DATA_POINTS of n_points); grid: (G,); initial, latest: (G,) outputs at the first
    checkpoint (step 0) and at the latest one."""

    x: np.ndarray
    y: np.ndarray
    n_points: int
    grid: np.ndarray
    initial: np.ndarray
    latest: np.ndarray
    first_step: int
    step: int


@dataclass(frozen=True)
class ParameterPath:
    """The single trained scalar. steps, values, ssr: (K,) the descent's marked steps;
    every_step: True when they are every step (replayed, checked), False when checkpoints only;
    curve_values, curve_ssr: (G,) SSR against the parameter, the others at their stored values
    (empty when one forward pass over the data would cost too much)."""

    label: str
    steps: np.ndarray
    values: np.ndarray
    ssr: np.ndarray
    every_step: bool
    curve_values: np.ndarray
    curve_ssr: np.ndarray


@dataclass(frozen=True)
class JobView:
    """steps, ssr: (≤ MAX_POINTS,) the thinned SSR history of ``n_steps`` stored steps."""

    job: JobRead
    steps: np.ndarray
    ssr: np.ndarray
    n_steps: int
    fit: Fit | None
    parameter: ParameterPath | None


@dataclass(frozen=True)
class SweepView:
    """members: every member job; curves: job id -> (steps, ssr) for ``MAX_CURVES`` of them at
    most, spread over the ranking by final SSR (the best and the worst among them)."""

    id: str
    name: str
    status: str
    paths: list[str]
    members: list[JobRead]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]


def job_view(job_id: str, *, tenant: str = DEFAULT_TENANT) -> JobView:
    """One job's picture data; NotFound for an unknown id (or another tenant's)."""
    with session_scope() as session:
        job = repository.get_job(session, job_id, tenant=tenant)
        spec = JobCreate.model_validate(repository.get_job_spec(session, job_id, tenant=tenant))
        arch = spec.architecture.to_engine()
        single = _single_trained(spec, arch)
        saved = _checkpoints(session, job_id, many=single is not None)
        last = saved[-1][0] if saved else job.step
        steps, ssr = repository.read_history(session, job_id, last)
        data = repository.load_dataset_arrays(session, spec.data.dataset_id) if saved else None
    keep = thin_to(steps, MAX_POINTS)
    if data is None:
        return JobView(job, steps[keep], ssr[keep], len(steps), None, None)
    x, y = (a.astype(spec.dtype) for a in data)
    fit = _fit(arch, saved, x, y) if arch.layers[0] == arch.layers[-1] == 1 else None
    parameter = None if single is None else _parameter_path(spec, arch, single, saved, steps, ssr, x, y)
    return JobView(job, steps[keep], ssr[keep], len(steps), fit, parameter)


def _checkpoints(session: Session, job_id: str, many: bool) -> list[tuple[int, dict[str, np.ndarray]]]:
    """The first and the latest stored checkpoint; with ``many``, up to MAX_CHECKPOINTS (and
    CHECKPOINT_BYTES) of them, evenly spread, the first and the latest always among them."""
    steps = np.asarray(repository.checkpoint_steps(session, job_id), dtype=np.int64)
    if not len(steps):
        return []
    ends = [repository.load_checkpoint_arrays(session, job_id, step) for step in sorted({int(steps[0]), int(steps[-1])})]
    ends = [found for found in ends if found is not None]
    size = sum(a.nbytes for a in ends[-1][1].values()) if ends else 1
    most = min(MAX_CHECKPOINTS, max(2, int(CHECKPOINT_BYTES // max(size, 1))))
    if not many or len(steps) <= 2 or most <= 2:
        return ends
    have = dict(ends)
    chosen = steps[thin_to(steps, most)].tolist()
    found = [(s, have[s]) if s in have else repository.load_checkpoint_arrays(session, job_id, s) for s in chosen]
    return [f for f in found if f is not None]


def _parameters(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix = "parameters/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _fit(arch: engine.Architecture, saved: list, x: np.ndarray, y: np.ndarray) -> Fit:
    """The network's curve at step 0 and at the latest checkpoint over the data's x range."""
    lo, hi = float(x.min()), float(x.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    grid = np.linspace(lo - pad, hi + pad, CURVE_POINTS)
    first, latest = _parameters(saved[0][1]), _parameters(saved[-1][1])
    both = {k: np.stack([first[k], latest[k]]) for k in latest}
    out = np.asarray(engine.predict(np, arch, both, grid[:, None].astype(x.dtype)), dtype=np.float64)
    shown = _spread(len(x), MAX_DATA_POINTS)
    return Fit(x[shown, 0].astype(np.float64), y[shown, 0].astype(np.float64), len(x), grid,
               out[0, :, 0], out[1, :, 0], saved[0][0], saved[-1][0])


def _spread(n: int, most: int) -> np.ndarray:
    """At most ``most`` indices of 0..n-1, evenly spaced, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(np.int64))


def _single_trained(spec: JobCreate, arch: engine.Architecture) -> tuple[str, tuple[int, ...]] | None:
    """(tensor name, index) of the one trained scalar, or None when more than one is trained."""
    shapes = arch.parameter_shapes()
    names = spec.trainable if spec.trainable is not None else list(shapes)
    entries = [(name, index) for name in names for index in np.ndindex(*shapes[name])]
    return entries[0] if len(entries) == 1 else None


def parameter_label(arch: engine.Architecture, name: str, index: tuple[int, ...]) -> str:
    """``b3`` for the lesson's network, else ``layers.1.bias[0]``."""
    where = f"{name}[{', '.join(map(str, index))}]"
    if arch.layers == (1, 2, 1) and (name, index) in _LESSON_NAMES:
        return f"{_LESSON_NAMES[name, index]} ({where})"
    return where


def _parameter_path(spec: JobCreate, arch: engine.Architecture, single: tuple[str, tuple[int, ...]],
                    saved: list, steps: np.ndarray, ssr: np.ndarray, x: np.ndarray, y: np.ndarray) -> ParameterPath:
    name, index = single
    last, size = saved[-1][0], sum(v.size for v in _parameters(saved[-1][1]).values())
    affordable = last <= MAX_REPLAY_STEPS and last * len(x) * size <= REPLAY_BUDGET
    replayed = _replay(spec, arch, single, saved, steps, ssr, x, y) if affordable else None
    if replayed is None:
        path = (np.array([s for s, _ in saved]), np.array([float(a[f"parameters/{name}"][index]) for _, a in saved]),
                np.array([float(a["ssr"]) for _, a in saved]))
    else:
        path = replayed
    values, curve = _ssr_curve(arch, _parameters(saved[-1][1]), single, path[1], x, y)
    return ParameterPath(parameter_label(arch, name, index), *path, replayed is not None, values, curve)


def _replay(spec: JobCreate, arch: engine.Architecture, single: tuple[str, tuple[int, ...]], saved: list,
            steps: np.ndarray, ssr: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple | None:
    """(steps, values, ssr) at every step (every k-th beyond MAX_MARKS steps), replayed with
    the engine from each stored checkpoint to the next; None unless the replay lands on every
    stored checkpoint's value and reproduces the stored SSR history."""
    name, index = single
    last = saved[-1][0]
    if last == 0 or saved[0][0] != 0 or not np.array_equal(steps, np.arange(last + 1)):
        return None
    config = _replay_config(spec, arch, name)
    stride = max(1, math.ceil(last / MAX_MARKS))
    tol = 1e-9 if spec.dtype == "float64" else 1e-4
    marks, replayed_ssr = [(0, float(saved[0][1][f"parameters/{name}"][index]))], [ssr[:1]]
    for (start, arrays), (end, target) in zip(saved, saved[1:]):
        state = engine.TrainState.from_arrays(_as_running(arrays), np)
        at = start
        while at < end:
            n = min(stride - at % stride, end - at)
            state, history = engine.train(np, arch, config, state, x, y, n)
            at += n
            if int(state.step[0]) != at:
                return None  # the replay stopped (diverged) where the job did not
            replayed_ssr.append(history[0, :n])
            marks.append((at, float(state.parameters[name][0][index])))
        if not math.isclose(marks[-1][1], float(target[f"parameters/{name}"][index]), rel_tol=tol, abs_tol=tol):
            return None
    if not np.allclose(np.concatenate(replayed_ssr), ssr, rtol=tol, atol=0, equal_nan=True):
        return None
    at = np.array([m[0] for m in marks])
    return at, np.array([m[1] for m in marks]), ssr[at]


def _as_running(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint as a one-member pack whose stop reason is cleared (it trained on)."""
    pack = {k: np.asarray(v)[None] for k, v in arrays.items()}
    pack["stop_reason"] = np.zeros(1, dtype=np.int8)
    return pack


def _replay_config(spec: JobCreate, arch: engine.Architecture, trained: str) -> engine.PackConfig:
    """The job's update rule without its stop rules (the stored steps say where it stopped).
    The mini-batch seed is the worker's (``services.training``: the init seed, else 0)."""
    return engine.PackConfig.single(
        spec.learning_rate, trainable={n: n == trained for n in arch.parameter_shapes()}, max_steps=2**62,
        momentum=spec.momentum or None, batch_size=spec.batch_size,
        batch_seed=spec.init.seed if isinstance(spec.init, SeedInit) else 0, dtype=spec.dtype,
    )


def _ssr_curve(arch: engine.Architecture, parameters: dict[str, np.ndarray], single: tuple[str, tuple[int, ...]],
               path: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSR at G values of the trained scalar around the path, one forward pass each (as a pack
    of G networks, in slices that keep the activations small); G shrinks with the cost of a
    pass, and is 0 when even 20 would cost more than PREDICT_BUDGET."""
    name, index = single
    cost = len(x) * sum(parameters[k].size for k in parameters)
    count = min(CURVE_POINTS, int(PREDICT_BUDGET // max(cost, 1)))
    if count < 20 or not np.isfinite(path).all():
        return np.empty(0), np.empty(0)
    lo, hi = float(path.min()), float(path.max())
    pad = 0.3 * (hi - lo) if hi > lo else max(abs(lo), 1.0) * 0.5
    values = np.linspace(lo - pad, hi + pad, count)
    width = max(arch.layers)
    per_slice = max(1, int(4e6 // (len(x) * width)))
    ssr = []
    for start in range(0, count, per_slice):
        chunk = values[start:start + per_slice]
        pack = {k: np.repeat(v[None], len(chunk), axis=0) for k, v in parameters.items()}
        pack[name][(slice(None), *index)] = chunk
        out = np.asarray(engine.predict(np, arch, pack, x), dtype=np.float64)
        ssr.append(((y.astype(np.float64)[None] - out) ** 2).sum(axis=(1, 2)))
    return values, np.concatenate(ssr)


def sweep_view(sweep_id: str, *, tenant: str = DEFAULT_TENANT) -> SweepView:
    """A sweep's members and the thinned SSR curves of at most MAX_CURVES of them."""
    with session_scope() as session:
        row = store.get_sweep_row(session, sweep_id, tenant=tenant)
        name, paths, planned = row.name, list(row.paths), row.members
        counts, _, steps_done = store.member_counts(session, sweep_id)
        status = sweep_status(row.cancelled, counts, steps_done)
        members = repository.list_jobs(session, tenant=tenant, limit=max(planned, 1), sweep_id=sweep_id)
        shown = _overlaid(members)
        curves = {}
        for job in shown:
            steps, ssr = repository.read_history(session, job.id, job.step)
            keep = thin_to(steps, MAX_POINTS // 2)
            curves[job.id] = (steps[keep], ssr[keep])
    return SweepView(sweep_id, name, status, paths, members, curves)


def _overlaid(members: list[JobRead]) -> list[JobRead]:
    """Members with an SSR, ranked by it; at most MAX_CURVES of them, evenly spread."""
    ranked = sorted((m for m in members if m.ssr is not None), key=lambda m: (m.ssr, m.id))
    return [ranked[i] for i in _spread(len(ranked), MAX_CURVES)] if ranked else []
