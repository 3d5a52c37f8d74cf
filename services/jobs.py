"""Job use cases: submit, read, list, cancel, and read results (history, parameters, predictions)."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from datetime import datetime
from typing import Any, get_args

import anyio.to_thread
import numpy as np

from services import doorbell, engine, idempotency, metrics, packing, quotas
from services.config import get_settings
from services.datasets import content_hash, to_arrays
from services.db import repository, scheduling
from services.db.models import DEFAULT_TENANT
from services.db.session import session_scope
from services.errors import Conflict, DomainError, InvalidInput, NotFound, StorageError
from services.group_commit import GroupCommit
from services.idempotency import Claim, Created
from services.spec import (
    BEYOND_FLOAT32, FINISHED, FLOAT32_MAX, ID_PATTERN, DatasetRead, HistoryRead, InlineData, JobCreate, JobPage,
    JobRead, JobStatus, LayerParameters, Matrix, ParametersRead, PredictRead, check_data_shape, check_limits,
    check_float32_range, check_matrix,
)

from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
DEFAULT_LIST_LIMIT = 50


def submit_job(spec: JobCreate, *, tenant: str = DEFAULT_TENANT) -> JobRead:
    """Store the job as queued and ring the scheduler's doorbell; the scheduler, the one
    publisher, packs it with whatever it can share a pack with. Nothing is sent to workers
    here, so a broker that is down loses nothing: the row is the truth."""
    return submit_job_once(spec, None, tenant=tenant).value


def submit_job_once(spec: JobCreate, idempotency_key: str | None, *, tenant: str = DEFAULT_TENANT) -> Created[JobRead]:
    """``submit_job``, once per idempotency key: a retry with the key and an equal spec gets
    the job as it is now (see ``services.idempotency``)."""
    inline = _prepare(spec)
    claim = None if idempotency_key is None else Claim.of(tenant, idempotency_key, "job", _request(spec, inline))
    return idempotency.once(claim, lambda: _submit(spec, inline, claim, tenant),
                            lambda session, job_id: repository.get_job(session, job_id, tenant=tenant))


async def submit_job_async(spec: JobCreate, idempotency_key: str | None, *,
                           tenant: str = DEFAULT_TENANT) -> Created[JobRead]:
    """``submit_job_once`` for the API's event loop. Without a key the job is written by this
    process's group commit, in one transaction with the others submitted meanwhile
    (``services.group_commit``); a create with a key (it reads the key before it writes) runs
    in a thread as ``submit_job_once``."""
    if idempotency_key is not None:
        return await anyio.to_thread.run_sync(partial(submit_job_once, spec, idempotency_key, tenant=tenant))
    return Created(await _group.submit((spec, tenant)))


def _prepare(spec: JobCreate) -> tuple | None:
    """Check the configured limits; inline data as (content hash, x, y) arrays, else None."""
    check_limits(spec, get_settings())
    if not isinstance(spec.data, InlineData):
        return None
    x, y = to_arrays(spec.data.x, spec.data.y, ("data",))
    return content_hash(x, y), x, y


def _write_submits(items: Sequence[tuple[JobCreate, str]]) -> list[JobRead | BaseException]:
    """The group commit's writer: each item is prepared alone (its input errors are its own),
    then all are written in one transaction; should that transaction fail, each is written
    alone as by ``submit_job``, so one bad item never fails the others."""
    prepared: list[tuple | BaseException] = []
    for spec, tenant in items:
        try:
            prepared.append((spec, _prepare(spec), tenant))
        except Exception as exc:  # noqa: BLE001 (handed to that request, which answers it)
            prepared.append(exc)
    ready = [p for p in prepared if isinstance(p, tuple)]
    try:
        written = _insert_together(ready)
    except StorageError:
        _known.clear()
        written = [_alone(*p) for p in ready]
    answers = iter(written)
    results = [p if isinstance(p, BaseException) else next(answers) for p in prepared]
    stored = sum(not isinstance(r, BaseException) for r in results)
    if stored:
        metrics.JOBS_SUBMITTED.inc(stored)
        doorbell.ring(get_settings())
    return results


def _alone(spec: JobCreate, inline: tuple | None, tenant: str) -> JobRead | BaseException:
    try:
        return _insert_retrying(spec, inline, None, tenant)
    except Exception as exc:  # noqa: BLE001 (handed to that request)
        return exc


def _insert_together(items: list[tuple]) -> list[JobRead | BaseException]:
    """One transaction for many submits; a quota or dataset refusal is that item's answer.

    SQLite has one writer, and in a burst the workers' checkpoint commits and these
    transactions take turns at its lock: what needs no database (the rows of jobs whose data
    this process has stored before, the answers) is built outside the transaction, so the lock
    is held for the reads and writes alone."""
    ahead = [_known_row(spec, inline, tenant) for spec, inline, tenant in items]
    results: list[dict | BaseException] = []
    seen: dict[tuple, DatasetRead] = {}
    accepted: dict[str, int] = {}  # per tenant: queued by this batch, inserted at its end
    with session_scope(write=True) as session:
        repository.lock_submits(session, [tenant for _, _, tenant in items])  # all at once, in one order
        for (spec, inline, tenant), row in zip(items, ahead):
            try:
                quotas.check_queued(session, tenant, 1, pending=accepted.get(tenant, 0))
                if inline is None:
                    dataset = _dataset(session, spec, inline, tenant, seen)
                    quotas.check_cost(get_settings(), [(spec, dataset.n_points)])
                else:  # refused before its data is stored, as a transaction of its own rolls back
                    quotas.check_cost(get_settings(), [(spec, len(inline[1]))])
                    if row is None:
                        dataset = _dataset(session, spec, inline, tenant, seen)
            except DomainError as exc:
                results.append(exc)
                continue
            accepted[tenant] = accepted.get(tenant, 0) + 1
            results.append(row or repository.new_job_values(**job_row(spec, dataset, tenant)))
        repository.insert_jobs(session, [r for r in results if isinstance(r, dict)])
    for key, dataset in seen.items():
        _known.keep(key, dataset)
    return [r if isinstance(r, BaseException) else repository.new_job_read(r) for r in results]


def _known_row(spec: JobCreate, inline: tuple | None, tenant: str) -> dict | None:
    """The new job's row when its inline data is a dataset this process remembers, else None.
    (Should the dataset be gone after all, the insert fails and ``_write_submits`` writes each
    submit alone, looking the dataset up again.)"""
    if inline is None:
        return None
    dataset = _known.recall((get_settings().database_url, tenant, inline[0]))  # in use: the last forgotten
    return None if dataset is None else repository.new_job_values(**job_row(spec, dataset, tenant))


def _dataset(session: Session, spec: JobCreate, inline: tuple | None, tenant: str,
             seen: dict[tuple, DatasetRead], use_cache: bool = True) -> DatasetRead:
    """The job's dataset: remembered (``use_cache``), stored now (inline data), or referenced
    by id. Inline datasets are added to ``seen``; the caller remembers them once committed."""
    if inline is None:
        return referenced_dataset(session, spec, tenant)
    key = (get_settings().database_url, tenant, inline[0])
    dataset = seen.get(key) or (_known.recall(key) if use_cache else None)
    if dataset is None:
        dataset = repository.store_dataset(session, *inline, tenant=tenant)
    seen[key] = dataset
    return dataset


def _request(spec: JobCreate, inline: tuple | None) -> dict:
    """What a key's request hash covers: the spec, its inline data by content hash."""
    data = {"content_hash": inline[0]} if inline is not None else spec.data.model_dump(mode="json")
    return spec.model_dump(mode="json", exclude={"data"}) | {"data": data}


def _submit(spec: JobCreate, inline: tuple | None, claim: Claim | None, tenant: str) -> JobRead:
    job = _insert_retrying(spec, inline, claim, tenant)
    metrics.JOBS_SUBMITTED.inc()
    doorbell.ring(get_settings())
    return job


def _insert_retrying(spec: JobCreate, inline: tuple | None, claim: Claim | None, tenant: str) -> JobRead:
    try:
        return _insert(spec, inline, claim, tenant, use_cache=True)
    except StorageError:
        _known.clear()  # a cached dataset may be gone (database restored or emptied): look again
        return _insert(spec, inline, claim, tenant, use_cache=False)


_KNOWN_MAX = 256


class _Recent(OrderedDict):
    """What this process read last, at most ``_KNOWN_MAX`` entries, the least recently used
    forgotten first. Locked: the API's threads and its group commit's thread share it."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def recall(self, key: tuple) -> Any:
        """The value kept for ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self.get(key)
            if value is not None:
                self.move_to_end(key)
            return value

    def keep(self, key: tuple, value: object) -> None:
        with self._lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > _KNOWN_MAX:
                self.popitem(last=False)


# Datasets are immutable and never deleted: a process remembers the ones it has seen by tenant
# and content hash, so a client resubmitting the same data costs one INSERT, not an upsert.
_known = _Recent()


def _insert(spec: JobCreate, inline: tuple | None, claim: Claim | None, tenant: str, use_cache: bool) -> JobRead:
    """One transaction: the dataset (unless remembered), the job and the idempotency key."""
    seen: dict[tuple, DatasetRead] = {}
    with session_scope(write=True) as session:
        quotas.check_queued(session, tenant, 1)
        dataset = _dataset(session, spec, inline, tenant, seen, use_cache)
        quotas.check_cost(get_settings(), [(spec, dataset.n_points)])
        job = repository.insert_job(session, **job_row(spec, dataset, tenant))
        if claim is not None:
            claim.store(session, job.id)
    for key, stored in seen.items():
        _known.keep(key, stored)
    return job


_group: GroupCommit[tuple[JobCreate, str], JobRead] = GroupCommit(_write_submits, name="descent-submits")


def forget_datasets() -> None:
    """Drop the remembered datasets (tests that empty the database call this)."""
    _known.clear()
    _magnitudes.clear()


def job_row(spec: JobCreate, dataset: DatasetRead, tenant: str, sweep_id: str | None = None,
            values: dict | None = None) -> dict:
    """The columns of a new job: its stored spec and what the scheduler packs it by."""
    document = stored_spec(spec, dataset.id)
    return dict(
        tenant_id=tenant, name=spec.name, spec=document, dataset_id=dataset.id, device=spec.device, sweep_id=sweep_id,
        pack_key=packing.pack_key(document, dataset.id), sweep_values=values,
        cost=packing.member_cost(spec.architecture.layers, dataset.n_points), max_steps=spec.stop.max_steps,
    )


def referenced_dataset(session: Session, spec: JobCreate, tenant: str) -> DatasetRead:
    """The tenant's stored dataset a spec names, checked against the spec (shape, limits)."""
    dataset = repository.find_dataset(session, spec.data.dataset_id, tenant=tenant)
    if dataset is None:
        raise InvalidInput(("data", "dataset_id"), f"unknown dataset {spec.data.dataset_id!r}")
    check_against_dataset(spec, dataset, session)
    return dataset


def check_against_dataset(spec: JobCreate, dataset: DatasetRead, session: Session | None = None) -> None:
    """The checks an inline ``data`` gets from the schema, for a stored dataset: its shape, its
    size and (a float32 job) its values' range, each located at ``data.dataset_id``. ``session``
    (the caller's) reads the values when they are needed; without one a read session of its own."""
    check_data_shape(spec, dataset.n_in, dataset.n_out)
    check_limits(spec, get_settings(), dataset.n_points)
    if spec.dtype == "float32":
        for part, largest in zip(("x", "y"), dataset_magnitudes(dataset.id, session)):
            if largest > FLOAT32_MAX:
                raise InvalidInput(("data", "dataset_id"), f"the dataset's {part} values reach a magnitude of "
                                                           f"{largest:.3g}, which {BEYOND_FLOAT32}")


# Datasets are immutable: the largest magnitudes of each one's x and y, once read, are remembered
# (a sweep checks each float32 member against the dataset its members share).
_magnitudes = _Recent()


def dataset_magnitudes(dataset_id: str, session: Session | None = None) -> tuple[float, float]:
    """(max |x|, max |y|) of a stored dataset, read in ``session`` or a read session of its own."""
    key = (get_settings().database_url, dataset_id)
    if (known := _magnitudes.recall(key)) is not None:
        return known
    if session is None:
        with session_scope() as own:
            x, y = repository.load_dataset_arrays(own, dataset_id)
    else:
        x, y = repository.load_dataset_arrays(session, dataset_id)
    known = (float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)))
    _magnitudes.keep(key, known)
    return known


def stored_spec(spec: JobCreate, dataset_id: str) -> dict:
    """The spec as JSON with its data replaced by a reference: rows stay small, and the stored
    document still validates as a ``JobCreate`` for the worker."""
    document = spec.model_dump(mode="json", exclude={"data"})
    document["data"] = {"dataset_id": dataset_id}
    return document


def get_job(job_id: str, *, tenant: str = DEFAULT_TENANT) -> JobRead:
    with session_scope() as session:
        return with_queue_workers(session, [repository.get_job(session, job_id, tenant=tenant)])[0]


def with_queue_workers(session: Session, items: list[JobRead]) -> list[JobRead]:
    """Each job waiting for a worker (queued, not parked at a rung) gets ``queue_workers``: the
    live workers of its queue. 0 tells a job that waits for a worker of its device to start (a
    gpu job with no gpu worker running waits, queued, until one does) from one waiting its turn."""
    if not any(_waits_for_a_worker(job) for job in items):
        return items
    live = scheduling.live_workers(session, scheduling.db_now(session), get_settings().lease_seconds)
    return [job.model_copy(update={"queue_workers": live.get(job.device, 0)}) if _waits_for_a_worker(job) else job
            for job in items]


def _waits_for_a_worker(job: JobRead) -> bool:
    return job.status == "queued" and job.rung is None


def list_jobs(
    status: str | None = None, sweep_id: str | None = None, limit: int | None = None,
    cursor: str | None = None, *, tenant: str = DEFAULT_TENANT,
) -> JobPage:
    """Newest first. ``next_cursor`` is None on the last page."""
    limit = DEFAULT_LIST_LIMIT if limit is None else limit
    maximum = get_settings().max_list_limit
    if not 1 <= limit <= maximum:
        raise InvalidInput(("limit",), f"must be between 1 and {maximum}")
    if status is not None and status not in get_args(JobStatus):
        raise InvalidInput(("status",), f"must be one of {', '.join(get_args(JobStatus))}")
    after = decode_cursor(cursor) if cursor else None
    with session_scope() as session:
        items = repository.list_jobs(session, tenant=tenant, limit=limit + 1, status=status, sweep_id=sweep_id,
                                     after=after)
        items = with_queue_workers(session, items)
    more = len(items) > limit
    items = items[:limit]
    return JobPage(items=items, next_cursor=encode_cursor(items[-1]) if more else None)


def encode_cursor(item: JobRead | object) -> str:
    """Keyset position of any item with ``created_at`` and ``id`` (jobs, sweeps)."""
    raw = f"{item.created_at.isoformat()}|{item.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Opaque to clients; anything that does not decode to (time, id) is their input error."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
        # Inside the try: a time at the edge of the calendar with an offset (0001-01-01+14:00)
        # has no UTC equivalent, and converting it raises OverflowError.
        utc = repository.as_utc(created_at) if created_at.tzinfo is not None else None
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise InvalidInput(("cursor",), "is not a cursor returned by this listing") from None
    if utc is None or not re.fullmatch(ID_PATTERN, job_id):
        raise InvalidInput(("cursor",), "is not a cursor returned by this listing")
    return utc, job_id


def cancel_job(job_id: str, *, tenant: str = DEFAULT_TENANT) -> JobRead:
    """Conditional updates, so a cancel racing a worker's claim is decided by the database:
    queued -> cancelled now; running -> cancel requested (the worker stops at its next
    checkpoint); finished -> Conflict."""
    with session_scope() as session:
        job, ended = _cancel(session, job_id, tenant)
    if ended:
        metrics.count_finished({"cancelled": 1})
    return job


def _cancel(session: Session, job_id: str, tenant: str) -> tuple[JobRead, bool]:
    """(the job, whether it ended now). The loop covers a claim landing between the two updates."""
    for _ in range(3):
        if repository.cancel_if_queued(session, job_id, tenant=tenant):
            return repository.get_job(session, job_id, tenant=tenant), True
        if repository.request_cancel_if_running(session, job_id, tenant=tenant):
            return repository.get_job(session, job_id, tenant=tenant), False
        job = repository.get_job(session, job_id, tenant=tenant)
        if job.status in FINISHED:
            raise Conflict(f"job {job_id} is already {job.status}")
    raise Conflict(f"job {job_id} changed state during the cancel; try again")


def get_history(job_id: str, every: int | None = None, max_points: int | None = None, *,
                tenant: str = DEFAULT_TENANT) -> HistoryRead:
    """SSR at steps 0..step, thinned to steps 0, k, 2k, ... plus always the last one; at most
    ``max_history_points`` in one document (``history_arrays`` streams any length)."""
    limit = get_settings().max_history_points
    if max_points is not None and max_points > limit:  # the API's schema has the lower bound (2)
        raise InvalidInput(("max_points",), f"must be at most {limit} (max_history_points) with format=json; "
                                            "stream the history (format=csv or ndjson) for more")
    thin_to_points = max_points if max_points is not None else (None if every else limit)
    steps, ssr = history_arrays(job_id, every, thin_to_points, tenant=tenant)
    if len(steps) > limit:
        raise InvalidInput(("every",), f"{len(steps)} points exceed the limit of {limit}; use a larger every, "
                                       "or stream the history (format=csv or ndjson)")
    values = [v if math.isfinite(v) else None for v in ssr.tolist()]
    return HistoryRead(steps=steps.tolist(), ssr=values)


def history_arrays(job_id: str, every: int | None = None, max_points: int | None = None, *,
                   tenant: str = DEFAULT_TENANT) -> tuple[np.ndarray, np.ndarray]:
    """(steps, ssr with NaN and infinities kept), thinned by ``every`` or to ``max_points``."""
    if every is not None and max_points is not None:
        raise InvalidInput(("every",), "give either every or max_points, not both")
    if every is not None and every < 1:
        raise InvalidInput(("every",), "must be at least 1")
    if max_points is not None and max_points < 1:
        raise InvalidInput(("max_points",), "must be at least 1")
    with session_scope() as session:
        job = repository.get_job(session, job_id, tenant=tenant)
        steps, ssr = repository.read_history(session, job_id, job.step)
    if every is not None:
        keep = thin(steps, every)
    elif max_points is not None:
        keep = thin_to(steps, max_points)
    else:
        return steps, ssr
    return steps[keep], ssr[keep]


def thin(steps: np.ndarray, every: int) -> np.ndarray:
    """Indices of the steps that are multiples of ``every``, and of the last step."""
    keep = steps % every == 0
    if len(keep):
        keep[-1] = True
    return np.flatnonzero(keep)


def thin_to(steps: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices, evenly spaced, the last step always among them."""
    n = len(steps)
    if n <= max_points:
        return np.arange(n)
    if max_points == 1:
        return np.array([n - 1])
    return thin(steps, thinning_step(n, max_points))


def thinning_step(n: int, max_points: int) -> int:
    """``ceil(n / max_points)``, raised when the always-kept last step would make one too many."""
    every = math.ceil(n / max_points)
    if (n - 1) // every + 1 + ((n - 1) % every != 0) > max_points:
        every = math.ceil((n - 1) / (max_points - 1))
    return every


def get_parameters(job_id: str, step: int | None = None, *, tenant: str = DEFAULT_TENANT) -> ParametersRead:
    with session_scope() as session:
        spec = repository.get_job_spec(session, job_id, tenant=tenant)
        found = repository.load_checkpoint_arrays(session, job_id, step)
        saved = repository.checkpoint_steps(session, job_id)
        if found is None and step is None:
            raise _untrained(session, job_id, tenant, "parameters exist once it has trained")
    if found is None:
        where = "none yet" if not saved else f"checkpoints at steps {_steps_text(saved)}"
        raise NotFound("checkpoint", f"{job_id} at step {step} ({where})")
    at, arrays = found
    layers = [
        LayerParameters.model_construct(
            weight=arrays[f"parameters/layers.{i}.weight"].tolist(),
            bias=arrays[f"parameters/layers.{i}.bias"].tolist(),
        )
        for i in range(len(spec["architecture"]["layers"]) - 1)
    ]
    return ParametersRead(step=at, layers=layers, checkpoint_steps=saved)


def _untrained(session: Session, job_id: str, tenant: str, then: str) -> Conflict:
    """A job without a checkpoint: one still to train gets ``then``; one that ended first
    (cancelled in the queue, failed) never will."""
    status = repository.get_job(session, job_id, tenant=tenant).status
    if status in FINISHED:
        return Conflict(f"job {job_id} ended {status} before its first checkpoint: it has no parameters")
    return Conflict(f"job {job_id} has no checkpoint yet; {then}")


def _steps_text(steps: list[int], most: int = 20) -> str:
    shown = ", ".join(map(str, steps[:most]))
    return shown + (f" and {len(steps) - most} more" if len(steps) > most else "")


def predict(job_id: str, x: Matrix, *, tenant: str = DEFAULT_TENANT) -> PredictRead:
    """Outputs of the latest checkpoint's network, computed with NumPy in this process."""
    with session_scope() as session:
        spec = JobCreate.model_validate(repository.get_job_spec(session, job_id, tenant=tenant))
        found = repository.load_checkpoint_arrays(session, job_id)
        if found is None:
            raise _untrained(session, job_id, tenant, "it predicts once it has trained")
    inputs = _prediction_inputs(x, spec.architecture.layers[0])
    if spec.dtype == "float32":
        check_float32_range(x, ("x",))  # the network computes in float32: such an input is infinite
    arch = spec.architecture.to_engine()
    _, arrays = found
    prefix = "parameters/"
    parameters = {name[len(prefix):]: value[None] for name, value in arrays.items() if name.startswith(prefix)}
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.asarray(engine.predict(np, arch, parameters, inputs.astype(spec.dtype)), dtype=np.float64)[0]
    overflowed = np.flatnonzero(~np.isfinite(y).all(axis=1))
    if len(overflowed):
        raise InvalidInput(("x", int(overflowed[0])), f"the network's output for this row is not a finite "
                           f"{spec.dtype} number (overflow); use inputs of smaller magnitude")
    return PredictRead(y=y.tolist())


def _prediction_inputs(x: Matrix, n_in: int) -> np.ndarray:
    if not x:
        raise InvalidInput(("x",), "must have at least one row")
    check_matrix(x, ("x",))
    if len(x[0]) != n_in:
        raise InvalidInput(("x",), f"rows have {len(x[0])} values but the network takes {n_in}")
    limit = get_settings().max_points
    if len(x) > limit:
        raise InvalidInput(("x",), f"{len(x)} points exceed the limit of {limit}")
    inputs = np.asarray(x, dtype=np.float64)
    if not np.isfinite(inputs).all():
        raise InvalidInput(("x",), "values must be finite numbers")
    return inputs
