"""The worker use case: claim jobs, train them as one engine pack, checkpoint, finish.

The message that started us may be a duplicate or a redelivery, and another worker may take a job
over when our lease lapses, so every write is fenced (``services/db/checkpoints.py``) and every
step of history is written exactly once: a resumed job continues at its latest checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

import numpy as np
from sqlalchemy import select
from tenacity import RetryCallState, retry, retry_if_exception_type, wait_exponential

from services import doorbell, engine, halving, heartbeat, metrics
from services.config import get_settings
from services.db import checkpoints as ckpt
from services.db.arrays import decode, pack_members
from services.db.models import Dataset, Job, Sweep
from services.db.repository import as_utc
from services.db.scheduling import db_now, mark_dispatched
from services.db.session import session_scope
from services.errors import DomainError, StorageError
from services.spec import ExplicitInit, JobCreate, SeedInit

log = logging.getLogger(__name__)


def _within_half_a_lease(state: RetryCallState) -> bool:
    """Stop retrying a database that blinked after half a lease: the last renewal is still
    valid until then, so an outage that short costs no takeover; a longer one is left to the
    lease (the scheduler requeues the jobs from their last checkpoint)."""
    return state.seconds_since_start >= get_settings().lease_seconds / 2


# Storage errors (a restart, a failover, a dropped connection) are retried whole, with backoff.
_storage_retry = retry(retry=retry_if_exception_type(StorageError), stop=_within_half_a_lease,
                       wait=wait_exponential(multiplier=0.2, max=3), reraise=True)

# A stop request (the worker is shutting down) is checked between slices of a chunk: each slice
# trains about this long, so a stop checkpoints and releases the jobs within seconds.
SLICE_SECONDS = 1.0
_stopping = threading.Event()


def request_stop() -> None:
    """Checkpoint what is trained at the end of the current slice, release the jobs, return.
    Safe to call from a signal handler."""
    _stopping.set()


@dataclass(frozen=True)
class Member:
    claim: ckpt.Claim
    spec: JobCreate
    rule: halving.Halving | None = None  # the sweep's successive halving, if any


@dataclass
class Pending:
    """Chunks trained but not committed yet (``Settings.checkpoint_commit_seconds``): their
    checkpoints and history, and the members that stopped or reached a rung in them. One
    transaction writes them all, so a pack of tiny networks whose chunks take a millisecond
    costs one commit per period instead of one per chunk; slower chunks commit one by one."""

    writes: list[ckpt.CheckpointWrite] = field(default_factory=list)
    stopped: list[ckpt.Outcome] = field(default_factory=list)  # natural stops, final at the commit
    parked: list[tuple[ckpt.Claim, int]] = field(default_factory=list)
    committed: float = field(default_factory=time.monotonic)  # when the last commit ended
    size: int = 0  # bytes of checkpoint data held

    def due(self, training: int) -> bool:
        """Commit now: no member trains on, a stop request, enough time or memory held."""
        return (not training or _stopping.is_set() or self.size >= MAX_PENDING_BYTES
                or time.monotonic() - self.committed >= get_settings().checkpoint_commit_seconds)

    def __bool__(self) -> bool:
        return bool(self.writes or self.stopped or self.parked)

    def clear(self) -> None:
        """After a commit (in place: the parts of a mini-batch pack share one Pending)."""
        self.writes, self.stopped, self.parked = [], [], []
        self.committed, self.size = time.monotonic(), 0

    def claims(self, members: list["Member"]) -> list[ckpt.Claim]:
        """Every claim this commit writes for: those of the held chunks and the training members."""
        found = {w.claim.job_id: w.claim for w in self.writes}
        found.update({o.claim.job_id: o.claim for o in self.stopped})
        found.update({c.job_id: c for c, _ in self.parked})
        found.update({m.claim.job_id: m.claim for m in members})
        return list(found.values())


# Held checkpoint data above this many bytes is committed at once, whatever the period.
MAX_PENDING_BYTES = 64 * 1024 * 1024


@dataclass
class Pack:
    """One engine pack: members share architecture, data, dtype, batching and checkpoint cadence."""

    members: list[Member]
    xp: object
    arch: engine.Architecture
    config: engine.PackConfig
    state: engine.TrainState
    x: np.ndarray
    y: np.ndarray
    queue: str = "cpu"  # the metrics' queue label
    slice: int = 100  # updates per engine call, tuned to about SLICE_SECONDS
    pending: Pending = field(default_factory=Pending)


def warm_up() -> None:
    """Load the engine's compiled kernels now (numba's, from its on-disk cache), on NumPy.

    The pool's parent calls this before it forks its children (``worker.app``), so that no child
    spends its first pack on them: about 0.35 s of CPU in a fresh process, most of it for the
    first pack of tiny networks (benchmarks/RESULTS.md, ninth session). Never for a GPU worker:
    CUDA must not be started before a fork, and NumPy's kernels are not what it runs."""
    shapes = [(layers, activation) for layers in ((1, 2, 1), (1, 8, 8, 1)) for activation in engine.ACTIVATIONS]
    for layers, activation in shapes:  # both layouts, every activation's kernels
        arch, points = engine.Architecture(layers, activation), 3 * layers[1] + 1
        for dtype in ("float64", "float32"):
            params = {k: np.stack([v, v]) for k, v in engine.init_parameters(arch, seed=0, dtype=dtype).items()}
            config = engine.PackConfig(learning_rate=np.full(2, 1e-3), dtype=dtype)
            x = np.linspace(-1.0, 1.0, points, dtype=dtype).reshape(-1, 1)
            y = np.sin(x)
            engine.train(np, arch, config, engine.init_state(np, arch, config, params, x, y), x, y, 2)


def run_pack(job_ids: list[str], *, hostname: str, pid: int, backend: str = "numpy") -> None:
    """Train whatever of ``job_ids`` this worker can claim. Never raises for a training error:
    the jobs are marked failed instead, so the broker does not redeliver a poison message.
    The scheduler sends packs of one pack key; should a message mix keys, each trains apart."""
    if _stopping.is_set():
        return _hand_back(job_ids)
    claims, now = _claim(job_ids, hostname, pid)
    if not claims:
        return
    _observe_waits(claims, now, metrics.queue_of(backend))
    groups: dict[str, list[ckpt.Claim]] = {}
    for claim in claims:
        groups.setdefault(claim.pack_key or claim.job_id, []).append(claim)
    try:
        with heartbeat.holding(claims):
            for group in groups.values():
                _train_claimed(group, backend)
            if _stopping.is_set():
                _release(claims)
    finally:
        if _stopping.is_set():
            heartbeat.leave()  # no longer a free worker in the scheduler's eyes
        doorbell.ring(freed=True)  # the scheduler may send what waited for a free worker


def _claim(job_ids: list[str], hostname: str, pid: int) -> tuple[list[ckpt.Claim], datetime]:
    """One transaction, retried whole. A commit that fails may still have landed (the connection
    dropped on the way back): the retry then finds the jobs running under this worker, stamped
    with a lease time an earlier try wrote, and takes them back instead of claiming nothing and
    leaving them to lapse untrained and be charged a lost lease."""
    return _claim_once(job_ids, hostname, pid, [])


@_storage_retry
def _claim_once(job_ids: list[str], hostname: str, pid: int,
                tried: list[datetime]) -> tuple[list[ckpt.Claim], datetime]:
    """One try; ``tried`` (shared by the tries) collects the lease time each one wrote."""
    with session_scope() as session:
        now = db_now(session)
        earlier = tuple(tried)
        tried.append(now)  # before the write: a try that fails after it may have landed
        return ckpt.claim_jobs(session, job_ids, hostname=hostname, pid=pid, now=now, earlier=earlier), now


def _hand_back(job_ids: list[str]) -> None:
    """A stopping worker that still receives a pack claims nothing: the jobs are marked unsent
    so the scheduler gives them to another worker now, not after ``redispatch_seconds``."""
    with session_scope() as session:
        mark_dispatched(session, job_ids, None)
    heartbeat.leave()
    doorbell.ring(freed=True)


def _release(claims: list[ckpt.Claim]) -> None:
    """Those still running (neither finished nor parked) go back to the queue for another worker."""
    try:
        with heartbeat.current().paused(), session_scope() as session:
            released = ckpt.release_jobs(session, claims)
    except DomainError:
        log.exception("could not release %s; their leases will lapse", _ids(claims))
        return
    log.info("stopping: released %d job(s) at their last checkpoint", released)


def _observe_waits(claims: list[ckpt.Claim], now: datetime, queue: str) -> None:
    """Queue wait is submit to first claim; a reclaim after a lost lease is not a wait."""
    histogram = metrics.QUEUE_WAIT.labels(queue)
    for claim in claims:
        if claim.attempt == 1 and claim.created_at is not None:
            histogram.observe(max(0.0, (now - as_utc(claim.created_at)).total_seconds()))


def _train_claimed(claims: list[ckpt.Claim], backend: str) -> None:
    log.info("training %d job(s): %s", len(claims), _ids(claims))
    queue = metrics.queue_of(backend)
    metrics.PACK_MEMBERS.labels(queue).observe(len(claims))
    part = None
    try:
        pack = _load_pack(claims, engine.get_namespace(backend), queue)
        for part in _lockstep(pack) if pack is not None else []:
            while part is not None and not _stopping.is_set():
                part = _advance(part)
            if part is not None and part.pending:
                _flush(part)  # a stop request: what was trained is committed before the release
    except StorageError:
        # The database, not the job, failed (after the chunk write's retries): leave the jobs
        # running; their lease lapses and the scheduler requeues them from their last checkpoint.
        log.exception("storage failed while training %s; their leases will lapse", _ids(claims))
    except Exception as exc:  # noqa: BLE001 (any failure of a job is reported on the job)
        log.exception("training failed for %s", _ids(claims))
        _flush_before_failing(part)
        _fail(claims, f"{type(exc).__name__}: {exc}")


def _flush_before_failing(part: Pack | None) -> None:
    """A job that fails keeps the checkpoints trained before the failure, as if each had been
    committed at once; if that commit fails too, the failure is still recorded."""
    if part is None or not part.pending:
        return
    try:
        _flush(part)
    except Exception:  # noqa: BLE001 (whatever broke the training may break this too)
        log.exception("could not commit the checkpoints held before the failure")


def _ids(claims: list[ckpt.Claim], shown: int = 5) -> str:
    """A log line names a few jobs, not a pack of thousands."""
    names = ", ".join(c.job_id for c in claims[:shown])
    return names + (f" and {len(claims) - shown} more" if len(claims) > shown else "")


def _fail(claims: list[ckpt.Claim], error: str) -> None:
    try:
        with heartbeat.current().paused(), session_scope() as session:
            failed = ckpt.fail_jobs(session, claims, error)
    except DomainError:
        log.exception("could not mark %s failed; the lease will expire", _ids(claims))
        return
    metrics.count_finished({"failed": failed})


def _batch_seed(spec: JobCreate) -> int:
    return spec.init.seed if isinstance(spec.init, SeedInit) else 0


def _load_pack(claims: list[ckpt.Claim], xp: object, queue: str = "cpu") -> Pack | None:
    """Resume members from their latest checkpoint; start the others at step 0 (and checkpoint
    that step with history [ssr0] so a job's history always starts at step 0)."""
    members, dataset, saved = _read_claimed(claims)
    first = members[0].spec
    arch = first.architecture.to_engine()
    x, y = _dataset_arrays(dataset, first.dtype)
    fresh = [m for m in members if m.claim.job_id not in saved]
    if len(fresh) == len(members):  # nothing to resume (the usual case): the initial state as is
        stacked = _initial_arrays(xp, arch, fresh, x, y)
        old = np.full(len(members), -1)
    else:
        if fresh:
            initial = _initial_arrays(xp, arch, fresh, x, y)
            saved = saved | {m.claim.job_id: _member_arrays(initial, i) for i, m in enumerate(fresh)}
        arrays = [saved[m.claim.job_id] for m in members]
        stacked = {name: np.stack([a[name] for a in arrays]) for name in arrays[0]}
        fresh_ids = {m.claim.job_id for m in fresh}
        old = np.array([-1 if m.claim.job_id in fresh_ids else int(a["step"]) for m, a in zip(members, arrays)])
    state = engine.TrainState.from_arrays(stacked, xp)
    pack = Pack(members, xp, arch, _config(arch, [m.spec for m in members]), state, x, y, queue)
    history = list(np.asarray(stacked["ssr"], dtype=np.float64).reshape(-1, 1))
    return _commit(pack, stacked, old, history)


def _read_claimed(claims: list[ckpt.Claim]) -> tuple[list[Member], Dataset, dict[str, dict[str, np.ndarray]]]:
    ids = [c.job_id for c in claims]
    with session_scope() as session:
        query = select(Job.id, Job.spec, Job.dataset_id, Job.sweep_id).where(Job.id.in_(ids))
        rows = {r.id: r for r in session.execute(query)}
        sweep_ids = {r.sweep_id for r in rows.values() if r.sweep_id}
        sweeps = dict(session.execute(select(Sweep.id, Sweep.spec).where(Sweep.id.in_(sweep_ids))).all())
        dataset = session.get(Dataset, rows[ids[0]].dataset_id)
        # A first claim has no checkpoint yet (only claims write them, fenced by attempt).
        saved = ckpt.load_latest(session, [c.job_id for c in claims if c.attempt > 1])
    members = [Member(c, JobCreate.model_validate(rows[c.job_id].spec), _rule(sweeps.get(rows[c.job_id].sweep_id)))
               for c in claims]
    return members, dataset, saved


def _rule(sweep: dict | None) -> halving.Halving | None:
    stopping = (sweep or {}).get("early_stopping")
    if not stopping:
        return None
    return halving.Halving(int(stopping["min_steps"]), int(stopping["reduction_factor"]))


def _initial_arrays(xp: object, arch: engine.Architecture, fresh: list[Member], x: np.ndarray,
                    y: np.ndarray) -> dict[str, np.ndarray]:
    """The step-0 state of ``fresh`` as host arrays with the pack axis first (their SSR included)."""
    specs = [m.spec for m in fresh]
    params = [_initial_parameters(arch, spec) for spec in specs]
    stacked = {name: np.stack([p[name] for p in params]) for name in params[0]}
    state = engine.init_state(xp, arch, _config(arch, specs), stacked, x, y)
    return state.to_arrays()


def _advance(pack: Pack) -> Pack | None:
    """Train one chunk of ``checkpoint_every`` updates, then checkpoint it (one host copy of
    the state per chunk: the checkpoint's; the steps before it come from the step array alone)."""
    old = _steps(pack.xp, pack.state)
    every = halving.chunk_length(old.tolist(), pack.members[0].spec.checkpoint_every,
                                 [m.rule for m in pack.members])
    state, history = _train_slices(pack, every)
    pack.state = state
    arrays = state.to_arrays()
    rows = [history[i, : int(arrays["step"][i]) - int(old[i])] for i in range(len(pack.members))]
    return _commit(pack, arrays, old, rows)


def _train_slices(pack: Pack, every: int) -> tuple[engine.TrainState, np.ndarray]:
    """Up to ``every`` updates, in slices of about SLICE_SECONDS, stopping early on a stop
    request or once every member has stopped (slices are bit-identical to one call: the
    engine's contract)."""
    state, parts, left, size = pack.state, [], every, min(every, pack.slice)
    before = _steps(pack.xp, state)
    while left > 0:
        started = time.perf_counter()
        state, history = engine.train(pack.xp, pack.arch, pack.config, state, pack.x, pack.y, size)
        elapsed = time.perf_counter() - started
        parts.append(history)
        left -= size
        # The engine returns early once every member has stopped (converged, diverged): the
        # time is that of the updates it ran, not of the `size` it was asked for.
        after = _steps(pack.xp, state)
        ran, before = int(np.max(after - before, initial=0)), after
        if ran:
            per_step = elapsed / ran
            metrics.PACK_STEP.labels(pack.queue).observe(per_step)
            pack.slice = max(1, int(SLICE_SECONDS / max(per_step, 1e-9)))
        if ran < size:  # every member has stopped: a further call would run no update
            break
        size = min(left, pack.slice)
        if _stopping.is_set():
            break
    return state, parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _steps(xp: object, state: engine.TrainState) -> np.ndarray:
    """Each member's step count, copied to the host."""
    return np.array(engine.to_host(xp, state.step), dtype=np.int64)


def _commit(pack: Pack, arrays: dict[str, np.ndarray], old: np.ndarray,
            history: list[np.ndarray]) -> Pack | None:
    """Add the chunk to the pack's pending commit, and commit when that is due: ONE transaction
    for the whole pack renews fences, writes the checkpoints of members that advanced, finishes
    stopped or cancelled ones. Returns the pack of members still training."""
    steps, pending = arrays["step"], pack.pending
    manifest, blobs = pack_members(arrays)
    for i, (m, step, before, ssr) in enumerate(zip(pack.members, steps.tolist(), old.tolist(), arrays["ssr"].tolist())):
        if step > before:
            pending.writes.append(ckpt.CheckpointWrite(m.claim, step, ssr, manifest, blobs[i], before + 1, history[i]))
            pending.size += len(blobs[i]) + history[i].nbytes
    stopped, keep = _natural_stops(pack.members, arrays["stop_reason"])
    parked, keep = _at_rungs(pack.members, keep, steps, old)
    pending.stopped += stopped
    pending.parked += parked
    if pending.due(len(keep)):
        keep = _flush(pack, keep)
    return _select(pack, keep)


def _flush(pack: Pack, keep: list[int] | None = None) -> list[int]:
    """Commit the pending chunks; returns which of ``keep`` (members of ``pack`` still training,
    all by default) go on: those whose fence held and that were not cancelled."""
    keep = list(range(len(pack.members))) if keep is None else keep
    training = [pack.members[i] for i in keep]
    outcomes, held = _write(pack.queue, pack.pending, training)
    pack.pending.clear()
    ended = {o.claim.job_id for o in outcomes}
    for m in training:
        if m.claim.job_id not in held:
            log.warning("job %s lost its fence (attempt %d); stopping it", m.claim.job_id, m.claim.attempt)
    going_on = [i for i in keep if pack.members[i].claim.job_id in held and pack.members[i].claim.job_id not in ended]
    if outcomes:  # a commit may end members of earlier chunks too (checkpoint_commit_seconds)
        log.info("finished %d job(s), %d of the pack train on: %s", len(outcomes), len(going_on),
                 _ids([o.claim for o in outcomes]))
    return going_on


@_storage_retry
def _write(queue: str, pending: Pending, training: list[Member]) -> tuple[list[ckpt.Outcome], dict[str, ckpt.Claim]]:
    """The commit's transaction, retried whole when the database fails it (a deadlock victim, a
    dropped connection): nothing of a failed transaction was written, so a retry is exact. The
    heartbeat waits meanwhile, so its renewal never competes with this one for the same rows.
    A cancel is read under the same row locks: a member still training, or one that just
    reached a rung, ends ``cancelled`` here, but a natural stop in the same chunks wins (the
    result is final)."""
    started = time.perf_counter()
    prepared = ckpt.prepare_writes(pending.writes)  # before the transaction: SQLite's write lock is shared
    with heartbeat.current().paused(), session_scope() as session:
        held = ckpt.hold_fences(session, pending.claims(training), db_now(session))
        ckpt.write_checkpoints(session, prepared, held)
        parked, cancelled_at_rung = _parking(pending.parked, held)
        outcomes = [o for o in pending.stopped if o.claim.job_id in held]
        outcomes += [ckpt.Outcome(m.claim, "cancelled", None) for m in training
                     if m.claim.job_id in held and held[m.claim.job_id].cancel_requested]
        outcomes += cancelled_at_rung
        ckpt.finish_jobs(session, outcomes)
        ckpt.park_jobs(session, parked)
    _count_chunk(queue, time.perf_counter() - started, pending.writes, held, outcomes)
    return outcomes, held


def _parking(parked: list[tuple[ckpt.Claim, int]],
             held: dict[str, ckpt.Claim]) -> tuple[list[tuple[ckpt.Claim, int]], list[ckpt.Outcome]]:
    """Of the members that reached a rung and are still ours, those to park, and those whose
    cancel was asked for meanwhile, which end ``cancelled`` at the rung's checkpoint instead:
    a parked member is not running any more, so nothing else would honour the cancel, and the
    cut would end it early-stopped or send it on training."""
    parking, cancelled = [], []
    for claim, rung in parked:
        if claim.job_id not in held:
            continue
        if held[claim.job_id].cancel_requested:
            cancelled.append(ckpt.Outcome(claim, "cancelled", None))
        else:
            parking.append((claim, rung))
    return parking, cancelled


def _count_chunk(queue: str, seconds: float, writes: list[ckpt.CheckpointWrite], held: dict[str, ckpt.Claim],
                 outcomes: list[ckpt.Outcome]) -> None:
    """After the commit: steps stored (a fresh job's step-0 checkpoint trained none) and finishes."""
    metrics.CHECKPOINT_WRITE.labels(queue).observe(seconds)
    steps = sum(w.step - max(w.first_step - 1, 0) for w in writes if w.claim.job_id in held)
    metrics.TRAINING_STEPS.labels(queue).inc(steps)
    finished: dict[str, int] = {}
    for outcome in outcomes:
        finished[outcome.status] = finished.get(outcome.status, 0) + 1
    metrics.count_finished(finished)


def _at_rungs(members: list[Member], keep: list[int], steps: np.ndarray,
              old: np.ndarray) -> tuple[list[tuple[ckpt.Claim, int]], list[int]]:
    """Members still training that just reached a rung of their sweep park there."""
    parked, going = [], []
    for i in keep:
        rule, step = members[i].rule, int(steps[i])
        if rule is not None and int(old[i]) < step < members[i].spec.stop.max_steps and halving.is_rung(step, rule):
            parked.append((members[i].claim, step))
        else:
            going.append(i)
    return parked, going


def _natural_stops(members: list[Member], reasons: np.ndarray) -> tuple[list[ckpt.Outcome], list[int]]:
    """Members the engine stopped (their final state, written at the next commit), and the
    indices of those still training."""
    outcomes, keep = [], []
    for i, m in enumerate(members):
        reason = engine.STOP_REASONS[int(reasons[i])]
        if reason == "running":
            keep.append(i)
        else:
            outcomes.append(ckpt.Outcome(m.claim, "diverged" if reason == "diverged" else "succeeded", reason))
    return outcomes, keep


def _select(pack: Pack, keep: list[int]) -> Pack | None:
    if not keep:
        return None
    if len(keep) == len(pack.members):
        return pack
    members = [pack.members[i] for i in keep]
    state = pack.state.select(keep)
    config = _config(pack.arch, [m.spec for m in members])
    return Pack(members, pack.xp, pack.arch, config, state, pack.x, pack.y, pack.queue, pack.slice, pack.pending)


def _lockstep(pack: Pack) -> list[Pack]:
    """Mini-batches need a pack's members at one step (the batch is a function of the step);
    resumed members at different checkpoints train as separate packs."""
    if pack.config.batch_size is None:
        return [pack]
    steps = engine.to_host(pack.xp, pack.state.step)
    return [_select(pack, np.flatnonzero(steps == s).tolist()) for s in np.unique(steps)]


def _member_arrays(arrays: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Checkpoints are stored per job without the pack axis (design.md, checkpoint layout)."""
    return {name: np.asarray(value[i]) for name, value in arrays.items()}


def _dataset_arrays(dataset: Dataset, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    x = decode(dataset.dtype, (dataset.n_points, dataset.n_in), dataset.x)
    y = decode(dataset.dtype, (dataset.n_points, dataset.n_out), dataset.y)
    return x.astype(dtype), y.astype(dtype)


def _initial_parameters(arch: engine.Architecture, spec: JobCreate) -> dict[str, np.ndarray]:
    if isinstance(spec.init, ExplicitInit):
        found = {}
        for i, layer in enumerate(spec.init.parameters.layers):
            found[f"layers.{i}.weight"] = np.asarray(layer.weight, dtype=spec.dtype)
            found[f"layers.{i}.bias"] = np.asarray(layer.bias, dtype=spec.dtype)
        return found
    return _seeded_parameters(arch, spec.init.seed, spec.dtype)


@lru_cache(maxsize=4096)
def _seeded_parameters(arch: engine.Architecture, seed: int, dtype: str) -> dict[str, np.ndarray]:
    """``engine.init_parameters``, remembered: sweeps repeat a few seeds over many jobs, and a
    seeded generator costs more to build than a tiny network costs to train a chunk. Read-only,
    as every caller stacks copies of them."""
    arrays = engine.init_parameters(arch, seed, dtype)
    for value in arrays.values():
        value.flags.writeable = False
    return arrays


def _config(arch: engine.Architecture, specs: list[JobCreate]) -> engine.PackConfig:
    """Per-member settings as (M,) arrays; pack-wide ones come from the first spec (the group
    key guarantees they agree)."""
    names = list(arch.parameter_shapes())
    momentum = np.array([s.momentum for s in specs], dtype=np.float64)
    return engine.PackConfig(
        learning_rate=np.array([s.learning_rate for s in specs], dtype=np.float64),
        trainable={n: np.array([s.trainable is None or n in s.trainable for s in specs]) for n in names},
        max_steps=np.array([s.stop.max_steps for s in specs], dtype=np.int64),
        min_step_size=np.array([s.stop.min_step_size for s in specs], dtype=np.float64),
        target_ssr=np.array([-np.inf if s.stop.target_ssr is None else s.stop.target_ssr for s in specs]),
        momentum=momentum if momentum.any() else None,
        batch_size=specs[0].batch_size,
        batch_seed=_batch_seed(specs[0]),
        dtype=specs[0].dtype,
    )
