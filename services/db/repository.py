"""Repository functions for datasets and jobs. Each takes the caller's session (so one use case
can write several things in one transaction) and returns read models or plain values: ORM rows
never leave ``services/db``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from datetime import datetime, timezone

import numpy as np
from uuid6 import uuid7
from sqlalchemy import Select, func, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from services.db import arrays, checkpoints, pg_arrays
from services.db.models import Checkpoint, Dataset, HistoryChunk, Job, utcnow
from services.db.session import dialect_insert
from services.errors import NotFound
from services.spec import DatasetRead, JobRead, WorkerInfo


def new_id() -> str:
    """A UUIDv7 (RFC 9562): its leading bits are the time it was made, so the ids of jobs
    submitted together sort together. Each index keyed by them (the jobs' primary key, and the
    checkpoints' and history's (job_id, step)) then takes a pack's rows on a few B-tree pages
    instead of one page each, which makes a worker's commit write fewer pages while it holds
    SQLite's lock (random ids: 200 checkpoint rows committed in 0.72 ms median, 1.69 mean; time-
    ordered: 0.38 and 0.58; benchmarks/RESULTS.md, eighth session). PostgreSQL's B-trees and
    WAL gain the same way."""
    return str(uuid7())


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC) and PostgreSQL uses the session's zone:
    normalise both so read models and cursors compare the same on every database."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/Infinity; a read model carries None instead."""
    return None if value is None or not math.isfinite(value) else float(value)


# --- datasets ---------------------------------------------------------------------------------


def dataset_to_read(row: Dataset) -> DatasetRead:
    return DatasetRead(
        id=row.id, content_hash=row.content_hash, n_points=row.n_points, n_in=row.n_in,
        n_out=row.n_out, created_at=as_utc(row.created_at),
    )


def find_dataset(session: Session, dataset_id: str, *, tenant: str) -> DatasetRead | None:
    row = session.get(Dataset, dataset_id)
    return None if row is None or row.tenant_id != tenant else dataset_to_read(row)


def find_dataset_by_hash(session: Session, content_hash: str, *, tenant: str) -> DatasetRead | None:
    query = select(Dataset).where(Dataset.tenant_id == tenant, Dataset.content_hash == content_hash)
    row = session.scalars(query).one_or_none()
    return None if row is None else dataset_to_read(row)


def store_dataset(session: Session, content_hash: str, x: np.ndarray, y: np.ndarray, *, tenant: str) -> DatasetRead:
    """Insert-if-absent by (tenant, content hash) with ON CONFLICT DO NOTHING, so two requests
    uploading the same data at once both get the one row instead of one of them a unique
    violation. Per tenant: the answer never tells whether another tenant holds the same data."""
    x_dtype, _, x_bytes = arrays.encode(x)
    _, _, y_bytes = arrays.encode(y.astype(x.dtype, copy=False))
    values = dict(
        id=new_id(), tenant_id=tenant, content_hash=content_hash, n_points=x.shape[0], n_in=x.shape[1],
        n_out=y.shape[1], dtype=x_dtype, x=x_bytes, y=y_bytes, created_at=utcnow(),
    )
    statement = dialect_insert(session, Dataset).values(**values)
    session.execute(statement.on_conflict_do_nothing(index_elements=["tenant_id", "content_hash"]))
    stored = find_dataset_by_hash(session, content_hash, tenant=tenant)
    assert stored is not None  # inserted above, or by the request we conflicted with
    return stored


def load_dataset_arrays(session: Session, dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (P, n_in) and ``y`` (P, n_out) as stored; NotFound if the id is unknown. Not
    scoped to a tenant: workers read the dataset of a job they claimed."""
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFound("dataset", dataset_id)
    x = arrays.decode(row.dtype, (row.n_points, row.n_in), row.x)
    y = arrays.decode(row.dtype, (row.n_points, row.n_out), row.y)
    return x, y


# --- submits ----------------------------------------------------------------------------------

_SUBMITS = 0x4445_5343  # the advisory lock space of tenants' submits ("DESC")


def lock_submits(session: Session, tenants: Iterable[str]) -> None:
    """On PostgreSQL, wait until the tenants' other submits have committed, and make later ones
    wait for this transaction (a transaction-scoped advisory lock per tenant): under READ
    COMMITTED a count of queued jobs cannot see those of submits still in flight, so concurrent
    submits each found room and a burst passed the tenant's queue limit many times over. Locks
    are taken in one order (by key), so two transactions never wait on each other; a tenant
    already locked in this transaction is skipped. SQLite runs one writer at a time already."""
    if session.get_bind().dialect.name != "postgresql":
        return
    held: set[str] = session.info.setdefault("descent_submit_locks", set())
    for key, tenant in sorted((_lock_key(t), t) for t in set(tenants) - held):
        session.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": _SUBMITS, "key": key})
        held.add(tenant)


def _lock_key(tenant: str) -> int:
    """A stable int4 per tenant (Python's ``hash`` differs between processes)."""
    return int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:4], "big", signed=True)


# --- jobs -------------------------------------------------------------------------------------


def job_to_read(row: Job) -> JobRead:
    return JobRead(
        id=row.id, name=row.name, status=row.status, step=row.step, ssr=finite_or_none(row.ssr),
        stop_reason=row.stop_reason, created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at), finished_at=as_utc(row.finished_at),
        attempts=row.attempts, worker=WorkerInfo(hostname=row.worker_hostname, pid=row.worker_pid),
        device=row.device, sweep_id=row.sweep_id, sweep_values=row.sweep_values, rung=row.rung, error=row.error,
        cancel_requested=bool(row.cancel_requested), max_steps=row.max_steps,
    )


def insert_job(
    session: Session, *, tenant_id: str, name: str, spec: dict, dataset_id: str, device: str,
    sweep_id: str | None = None, pack_key: str = "", cost: float = 1.0, sweep_values: dict | None = None,
    max_steps: int | None = None,
) -> JobRead:
    """``spec`` is the validated spec as JSON with its data replaced by ``{"dataset_id": ...}``.
    A Core insert (no unit of work): the submit path is the API's hottest."""
    values = new_job_values(tenant_id=tenant_id, name=name, spec=spec, dataset_id=dataset_id, device=device, sweep_id=sweep_id,
                            pack_key=pack_key, cost=cost, sweep_values=sweep_values, max_steps=max_steps)
    insert_jobs(session, [values])
    return new_job_read(values)


def insert_jobs(session: Session, rows: list[dict]) -> None:
    """Jobs from ``new_job_values`` rows, in one executemany (``new_job_read`` gives each one's read)."""
    if rows:
        session.execute(insert(Job.__table__), rows)


def new_job_read(values: dict) -> JobRead:
    """A job just inserted from ``new_job_values`` as its read, built from those values (a
    caller holding SQLite's write lock builds the reads after its commit)."""
    return JobRead(id=values["id"], name=values["name"], status="queued", step=0, ssr=None, stop_reason=None,
                   created_at=values["created_at"], started_at=None, finished_at=None, attempts=0,
                   worker=WorkerInfo(), device=values["device"], sweep_id=values.get("sweep_id"),
                   sweep_values=values.get("sweep_values"), max_steps=values.get("max_steps"))


def new_job_values(**columns: object) -> dict:
    """Every column of a new queued job, for one insert or a bulk insert of sweep members (which
    pass the sweep's one ``created_at``: they were submitted together)."""
    return {"id": new_id(), "status": "queued", "step": 0, "attempts": 0, "lost_leases": 0, "cancel_requested": False,
            "created_at": utcnow()} | columns


def find_job(session: Session, job_id: str, *, tenant: str) -> JobRead | None:
    """The tenant's job; another tenant's is as absent as an unknown id."""
    # populate_existing: conditional UPDATEs in the same session bypass the identity map.
    row = session.get(Job, job_id, populate_existing=True)
    return None if row is None or row.tenant_id != tenant else job_to_read(row)


def get_job(session: Session, job_id: str, *, tenant: str) -> JobRead:
    job = find_job(session, job_id, tenant=tenant)
    if job is None:
        raise NotFound("job", job_id)
    return job


def get_job_spec(session: Session, job_id: str, *, tenant: str) -> dict:
    """The stored spec document (data as ``{"dataset_id": ...}``); NotFound if unknown."""
    spec = session.scalar(select(Job.spec).where(Job.id == job_id, Job.tenant_id == tenant))
    if spec is None:
        raise NotFound("job", job_id)
    return spec


def list_jobs(
    session: Session, *, tenant: str, limit: int, status: str | None = None, sweep_id: str | None = None,
    after: tuple[datetime, str] | None = None,
) -> list[JobRead]:
    """Newest first, keyset on (created_at, id): a page costs the same wherever it starts,
    and jobs submitted while a client pages never shift or repeat entries."""
    query: Select = select(Job).where(Job.tenant_id == tenant)
    if status is not None:
        query = query.where(Job.status == status)
    if sweep_id is not None:
        query = query.where(Job.sweep_id == sweep_id)
    if after is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < after)
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return [job_to_read(row) for row in session.scalars(query)]


def cancel_if_queued(session: Session, job_id: str, *, tenant: str) -> bool:
    """Conditional UPDATE: races with a worker's claim (also conditional) and exactly one wins."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.tenant_id == tenant, Job.status == "queued")
        .values(status="cancelled", finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def request_cancel_if_running(session: Session, job_id: str, *, tenant: str) -> bool:
    """The worker sees the flag at its next checkpoint and finishes the job as cancelled."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.tenant_id == tenant, Job.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


# --- history and checkpoints ------------------------------------------------------------------


def read_history(session: Session, job_id: str, last_step: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps 0..last_step that have a recorded SSR, as (steps int64, ssr float64; NaN kept).

    Chunks past ``last_step`` (none in a consistent database) are ignored; a later chunk wins
    where two overlap, as it was written by the later attempt.
    """
    ssr = np.full(last_step + 1, np.nan)
    present = np.zeros(last_step + 1, dtype=bool)
    postgres = session.get_bind().dialect.name == "postgresql"
    column = func.array_send(HistoryChunk.ssr) if postgres else HistoryChunk.ssr
    query = (
        select(HistoryChunk.first_step, column)
        .where(HistoryChunk.job_id == job_id, HistoryChunk.first_step <= last_step)
        .order_by(HistoryChunk.first_step)
    )
    for first, values in session.execute(query):
        if postgres:
            values = pg_arrays.decode_float8_array(values)
        chunk = values[: last_step + 1 - first]
        ssr[first:first + len(chunk)] = chunk
        present[first:first + len(chunk)] = True
    steps = np.flatnonzero(present)
    return steps.astype(np.int64), ssr[steps]


def checkpoint_steps(session: Session, job_id: str) -> list[int]:
    query = select(Checkpoint.step).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
    return list(session.scalars(query))


def load_checkpoint_arrays(
    session: Session, job_id: str, step: int | None = None
) -> tuple[int, dict[str, np.ndarray]] | None:
    """The job's latest checkpoint (or the one at ``step``) as (step, name -> array without the
    pack axis), or None when there is no such checkpoint."""
    if step is None:
        found = checkpoints.load_latest(session, [job_id]).get(job_id)
        return None if found is None else (int(found["step"]), found)
    row = session.execute(
        select(Checkpoint.manifest, Checkpoint.data).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
    ).one_or_none()
    return None if row is None else (step, arrays.unpack(row.manifest, row.data))
