"""Claims, fenced checkpoint writes and final states of training jobs.

A message may be delivered twice and a worker may die at any moment, so the database decides who
trains a job: ``claim_jobs`` bumps ``attempts`` (the fencing token) with a conditional UPDATE, and
every later write is guarded by ``attempts = :attempt``. A worker that lost its job (lease expired
and someone else claimed it, or the job was finished elsewhere) writes nothing.

All functions take the caller's session so one use case can write a whole pack in ONE transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
from sqlalchemy import JSON, ColumnElement, Float, Text, and_, bindparam, case, cast, func, or_, select, update
from sqlalchemy.orm import Session

from services.db import pg_arrays
from services.db.arrays import Manifest, pack, unpack
from services.db.models import Checkpoint, HistoryChunk, Job, utcnow
from services.db.session import dialect_insert

_jobs = Job.__table__
_F8 = Float(precision=53)


@dataclass(frozen=True)
class Claim:
    """A job this worker now owns, and the token that fences its writes."""

    job_id: str
    attempt: int
    cancel_requested: bool = False
    pack_key: str = ""
    created_at: datetime | None = None  # submit time, as the driver returns it (naive on SQLite)


@dataclass(frozen=True)
class CheckpointWrite:
    """One member's checkpoint: its packed arrays (without the pack axis) and the SSR of the
    new steps."""

    claim: Claim
    step: int
    ssr: float
    manifest: Manifest
    data: bytes
    first_step: int
    history: np.ndarray  # SSR after steps first_step .. step (may be empty)

    @classmethod
    def of(cls, claim: Claim, step: int, arrays: dict[str, np.ndarray], first_step: int,
           history: np.ndarray) -> "CheckpointWrite":
        manifest, data = pack(arrays)
        return cls(claim, step, float(arrays["ssr"]), manifest, data, first_step, history)


@dataclass(frozen=True)
class Outcome:
    """A final state: status is succeeded, diverged or cancelled."""

    claim: Claim
    status: str
    stop_reason: str | None


def claim_jobs(
    session: Session, job_ids: Sequence[str], *, hostname: str, pid: int, now: datetime | None = None,
    earlier: Sequence[datetime] = (),
) -> list[Claim]:
    """Queued jobs become ours; anything else (claimed by another worker, parked at a rung,
    cancelled, finished) is skipped, which makes a duplicate delivery a no-op. A running job
    whose lease lapsed is not claimed here: the scheduler requeues it (and counts the loss).

    ``earlier``: the lease times (``now``) of earlier tries of this same claim, whose commit
    failed but may have landed; the jobs they claimed are taken back (``_reclaim``)."""
    now = now or utcnow()
    found = _reclaim(session, job_ids, hostname, pid, now, earlier) if earlier else {}
    stmt = (
        update(_jobs).where(_jobs.c.id.in_(list(job_ids)), _jobs.c.status == "queued", _jobs.c.rung.is_(None))
        .values(status="running", attempts=_jobs.c.attempts + 1, worker_hostname=hostname,
                worker_pid=pid, heartbeat_at=now, started_at=func.coalesce(_jobs.c.started_at, now))
        .returning(*_CLAIMED)
    )
    found.update(_claims(session.execute(stmt)))
    return [found[job_id] for job_id in job_ids if job_id in found]


_CLAIMED = (_jobs.c.id, _jobs.c.attempts, _jobs.c.cancel_requested, _jobs.c.pack_key, _jobs.c.created_at)


def _claims(rows: Iterable) -> dict[str, Claim]:
    return {row.id: Claim(row.id, row.attempts, bool(row.cancel_requested), row.pack_key, row.created_at)
            for row in rows}


def _reclaim(session: Session, job_ids: Sequence[str], hostname: str, pid: int, now: datetime,
             earlier: Sequence[datetime]) -> dict[str, Claim]:
    """Jobs an earlier try of this claim took: its commit landed but the answer was lost, so a
    retry would find them no longer queued and leave them running untrained until their lease
    lapsed. Still running under this worker with the lease time that try wrote (no heartbeat has
    renewed it: none runs before the claim returns), they are ours at the attempt they hold; the
    lease is renewed to ``now``."""
    stmt = (
        update(_jobs).where(_jobs.c.id.in_(list(job_ids)), _jobs.c.status == "running",
                            _jobs.c.worker_hostname == hostname, _jobs.c.worker_pid == pid,
                            _jobs.c.heartbeat_at.in_(list(earlier)))
        .values(heartbeat_at=now)
        .returning(*_CLAIMED)
    )
    return _claims(session.execute(stmt))


def load_latest(session: Session, job_ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Each job's newest checkpoint as arrays without the pack axis (jobs without one are absent)."""
    if not job_ids:
        return {}
    latest = (
        select(Checkpoint.job_id, func.max(Checkpoint.step).label("step"))
        .where(Checkpoint.job_id.in_(list(job_ids))).group_by(Checkpoint.job_id).subquery()
    )
    rows = session.execute(
        select(Checkpoint.job_id, Checkpoint.manifest, Checkpoint.data).join(
            latest, and_(Checkpoint.job_id == latest.c.job_id, Checkpoint.step == latest.c.step)
        )
    )
    return {row.job_id: unpack(row.manifest, row.data) for row in rows}


def _still_ours(claims: Sequence[Claim]) -> ColumnElement[bool]:
    """The fence: rows still running under the attempt each claim was given. Written as one
    ``id IN (...) AND attempts = n`` per attempt number (a pack's claims nearly all share one):
    SQLAlchemy renders a tuple IN value by value, several times slower for a large pack."""
    by_attempt: dict[int, list[str]] = {}
    for claim in claims:
        by_attempt.setdefault(claim.attempt, []).append(claim.job_id)
    fences = [and_(_jobs.c.id.in_(ids), _jobs.c.attempts == attempt) for attempt, ids in by_attempt.items()]
    return and_(or_(*fences), _jobs.c.status == "running")


def hold_fences(session: Session, claims: Iterable[Claim], now: datetime | None = None) -> dict[str, Claim]:
    """Renew the lease of every claim still ours and lock those rows for this transaction.

    Returns the claims still held, refreshed with the current ``cancel_requested`` (read under the
    same lock as the checkpoint write, so a cancel is honoured at exactly one checkpoint)."""
    claims = list(claims)
    if not claims:
        return {}
    stmt = (
        update(_jobs).where(_still_ours(claims))
        .values(heartbeat_at=now or utcnow())
        .returning(_jobs.c.id, _jobs.c.attempts, _jobs.c.cancel_requested)
    )
    return {row.id: Claim(row.id, row.attempts, bool(row.cancel_requested)) for row in session.execute(stmt)}


def release_jobs(session: Session, claims: Sequence[Claim]) -> int:
    """Give jobs back to the queue at once (a worker told to stop, after its last checkpoint):
    the scheduler sends them to another worker without waiting for their lease to lapse. Fenced:
    only claims still ours and still running. Returns how many were released."""
    if not claims:
        return 0
    stmt = update(_jobs).where(_still_ours(claims)).values(status="queued", dispatched_at=None, heartbeat_at=None)
    return session.execute(stmt).rowcount


def park_jobs(session: Session, parked: Sequence[tuple[Claim, int]]) -> None:
    """Members that reached a successive-halving rung wait there, queued but not dispatchable,
    until the scheduler cuts the rung (fenced: only our claims)."""
    if not parked:
        return
    stmt = (
        update(_jobs).where(_jobs.c.id == bindparam("b_id"), _jobs.c.attempts == bindparam("b_attempt"),
                            _jobs.c.status == "running")
        .values(status="queued", rung=bindparam("b_rung"), dispatched_at=None, heartbeat_at=None)
    )
    session.execute(stmt, [{"b_id": c.job_id, "b_attempt": c.attempt, "b_rung": rung} for c, rung in parked])


@dataclass(frozen=True)
class PreparedWrites:
    """The rows ``write_checkpoints`` writes, each with the claim that fences it: built before
    the transaction (``prepare_writes``), so SQLite's one write lock, which the API's submits
    wait for meanwhile, is held for the statements alone."""

    checkpoints: list[tuple[Claim, dict]]
    history: list[tuple[Claim, dict]]
    summaries: list[tuple[Claim, dict]]


def prepare_writes(writes: Sequence[CheckpointWrite]) -> PreparedWrites:
    now = utcnow()
    # A chunk's members share one manifest object: each distinct one is encoded once (``writes``
    # holds them all, so their ids stay theirs for the call).
    encoded = {key: json.dumps(m) for key, m in {id(w.manifest): w.manifest for w in writes}.items()}
    runs = _runs(writes)
    return PreparedWrites(
        [(w.claim, {"job_id": w.claim.job_id, "step": w.step, "attempt": w.claim.attempt, "created_at": now,
                    "manifest_json": encoded[id(w.manifest)], "data": w.data}) for w in writes],
        [(w.claim, {"job_id": w.claim.job_id, "first_step": int(w.first_step), "ssr": w.history})
         for w in runs if len(w.history)],
        [(w.claim, _summary(w)) for w in runs],
    )


def write_checkpoints(
    session: Session, writes: Sequence[CheckpointWrite] | PreparedWrites, held: dict[str, Claim] | None = None,
) -> dict[str, Claim]:
    """Write every member's checkpoint, history chunk and job summary whose fence still holds.

    Returns the held claims (with fresh ``cancel_requested``); a job missing from the result lost
    its fence and must stop training. ``held`` is the result of ``hold_fences`` when the caller
    already took the fences of a larger pack in this transaction. ``writes`` may come prepared
    (``prepare_writes``)."""
    prepared = writes if isinstance(writes, PreparedWrites) else prepare_writes(writes)
    if held is None:
        held = hold_fences(session, (claim for claim, _ in prepared.checkpoints))

    def mine(rows: list[tuple[Claim, dict]]) -> list[dict]:
        return [row for claim, row in rows if claim.job_id in held and held[claim.job_id].attempt == claim.attempt]

    checkpoints = mine(prepared.checkpoints)
    if not checkpoints:
        return held
    insert = _insert_once(session, Checkpoint.__table__, ["job_id", "step"]).values(manifest=_manifest_json(session))
    session.execute(insert, checkpoints)
    write_history_chunks(session, mine(prepared.history))
    summaries = mine(prepared.summaries)
    if summaries:
        session.execute(_SUMMARY, summaries)
    return held


def _manifest_json(session: Session) -> ColumnElement:
    """The manifest column's value as JSON text encoded by the caller (PostgreSQL is told it is
    JSON; SQLite stores JSON as that text)."""
    param = bindparam("manifest_json", type_=Text())
    return cast(param, JSON) if session.get_bind().dialect.name == "postgresql" else param


def _runs(writes: Sequence[CheckpointWrite]) -> list[CheckpointWrite]:
    """Consecutive checkpoints of one job (a commit of several chunks) as one write of their
    joined history ending at the last: one history row and one summary update per job, not per
    chunk. Every checkpoint row is still written by the caller."""
    by_job: dict[str, list[CheckpointWrite]] = {}
    for w in writes:
        by_job.setdefault(w.claim.job_id, []).append(w)
    return [_joined(chunks) for chunks in by_job.values()]


def _joined(chunks: list[CheckpointWrite]) -> CheckpointWrite:
    """One job's consecutive checkpoints as one, its history concatenated once."""
    for before, after in zip(chunks, chunks[1:]):
        if before.step + 1 != after.first_step:
            raise ValueError(f"checkpoints of job {after.claim.job_id} out of order: {before.step} then {after.first_step}")
    if len(chunks) == 1:
        return chunks[0]
    history = np.concatenate([w.history for w in chunks])
    return replace(chunks[-1], first_step=chunks[0].first_step, history=history)


def write_history_chunks(session: Session, rows: Sequence[dict]) -> None:
    """Bulk insert of ``{job_id, first_step, ssr}`` rows: one row per chunk, not per step, which
    is what makes millions of SSR points per second possible. ``ssr`` may be an array or a list.

    On PostgreSQL each chunk goes over the wire as a binary float8[] built by NumPy in one call
    (psycopg's own list adaptation costs ~2 µs per float); SQLite stores raw float64 bytes."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        pg_arrays.register(session.connection().connection.dbapi_connection)
        values = [{"job_id": r["job_id"], "first_step": int(r["first_step"]),
                   "ssr": pg_arrays.Float8Values(r["ssr"])} for r in rows]
        session.execute(_insert_once(session, pg_arrays.HISTORY_CHUNKS, ["job_id", "first_step"]), values)
        return
    session.execute(_insert_once(session, HistoryChunk.__table__, ["job_id", "first_step"]), [
        {"job_id": r["job_id"], "first_step": int(r["first_step"]), "ssr": r["ssr"]} for r in rows
    ])


def _insert_once(session: Session, table: object, key: list[str]):  # noqa: ANN202 (dialect Insert)
    """INSERT ... ON CONFLICT DO NOTHING: a chunk write retried after a commit that did land
    (the connection dropped on the way back) writes nothing twice and does not fail."""
    return dialect_insert(session, table).on_conflict_do_nothing(index_elements=key)


# One executemany keeps jobs.step/ssr/best_ssr current so listings never read history.
_SUMMARY = (
    update(_jobs).where(_jobs.c.id == bindparam("b_id"), _jobs.c.attempts == bindparam("b_attempt"))
    .values(step=bindparam("b_step"), ssr=bindparam("b_ssr"), best_ssr=case(
        (or_(_jobs.c.best_ssr.is_(None), _jobs.c.best_ssr > bindparam("b_best", type_=_F8)),
         bindparam("b_best", type_=_F8)),
        else_=_jobs.c.best_ssr,
    ))
)


def _summary(write: CheckpointWrite) -> dict:
    ssr = write.ssr
    values = np.append(np.asarray(write.history, dtype=np.float64), ssr)
    finite = values[np.isfinite(values)]
    best = float(finite.min()) if finite.size else None
    return {"b_id": write.claim.job_id, "b_attempt": write.claim.attempt, "b_step": write.step,
            "b_ssr": ssr if math.isfinite(ssr) else None, "b_best": best}


def finish_jobs(session: Session, outcomes: Sequence[Outcome], now: datetime | None = None) -> None:
    """Final states, fenced: a job finished by a stale worker is not ours to finish."""
    if not outcomes:
        return
    stmt = (
        update(_jobs).where(_jobs.c.id == bindparam("b_id"), _jobs.c.attempts == bindparam("b_attempt"),
                            _jobs.c.status == "running")
        .values(status=bindparam("b_status"), stop_reason=bindparam("b_reason"), finished_at=now or utcnow())
    )
    session.execute(stmt, [
        {"b_id": o.claim.job_id, "b_attempt": o.claim.attempt, "b_status": o.status,
         "b_reason": o.stop_reason}
        for o in outcomes
    ])


def fail_jobs(session: Session, claims: Sequence[Claim], error: str, now: datetime | None = None) -> int:
    """Mark jobs failed with the error text (only those still ours); returns how many."""
    if not claims:
        return 0
    stmt = update(_jobs).where(_still_ours(claims)).values(status="failed", error=error[:10_000],
                                                            finished_at=now or utcnow())
    return session.execute(stmt).rowcount
