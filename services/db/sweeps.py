"""Storage of sweeps: the sweep row, its members' bulk insert, and the summaries a sweep read
needs (counts by status and stop reason, progress, leaderboard), all computed in SQL from the
members' job rows so they can never disagree with the members."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Dialect, Select, case, func, insert, select, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import sqltypes
from sqlalchemy.types import TypeEngine

from services.db.models import Job, Sweep, utcnow
from services.db.repository import as_utc, finite_or_none, new_id
from services.errors import NotFound
from services.sweep_spec import LeaderEntry

_jobs = Job.__table__
UNFINISHED = ("queued", "running")


def insert_sweep(session: Session, *, tenant: str, name: str, spec: dict, paths: list[str], members: int,
                 planned_steps: int) -> Sweep:
    row = Sweep(id=new_id(), tenant_id=tenant, name=name, spec=spec, paths=paths, members=members, planned_steps=planned_steps,
                cancelled=False, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def insert_members(session: Session, rows: Sequence[dict], batch: int = 2000) -> None:
    """One executemany per batch: a 10,000-member sweep is a few round trips, not 10,000. On
    PostgreSQL, one COPY instead (``_copy_members``)."""
    if rows and session.get_bind().dialect.name == "postgresql":
        _copy_members(session, rows)
        return
    for start in range(0, len(rows), batch):
        session.execute(insert(_jobs), list(rows[start:start + batch]))


def _copy_members(session: Session, rows: Sequence[dict]) -> None:
    """``COPY jobs FROM STDIN`` in the session's transaction: the multi-row INSERTs spent most
    of a 10,000-member sweep's acceptance on PostgreSQL (0.5-1.3 s of 1.2-2.1 s) building and
    parsing statements. Each value goes through its column type's own bind processing, so a
    row is stored exactly as the INSERT would store it (JSON documents as JSON text)."""
    columns = list(rows[0])
    dialect = session.get_bind().dialect
    processors = [_copy_processor(_jobs.c[name].type, dialect) for name in columns]
    connection = session.connection().connection.driver_connection  # psycopg's, same transaction
    with connection.cursor() as cursor, cursor.copy(f"COPY jobs ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([value if process is None else process(value)
                            for process, value in zip(processors, (row[name] for name in columns))])


def _copy_processor(column_type: TypeEngine, dialect: Dialect) -> Callable[[object], object] | None:
    """How a value of this column goes into COPY's text: JSON as its JSON text (None as JSON
    null, as the column stores it), other types as the INSERT would bind them."""
    if isinstance(column_type.dialect_impl(dialect), sqltypes.JSON):
        return json.dumps
    return column_type.bind_processor(dialect)


def get_sweep_row(session: Session, sweep_id: str, *, tenant: str) -> Sweep:
    """The tenant's sweep; another tenant's is NotFound like an unknown id. The member queries
    below take a sweep id that went through here."""
    row = session.get(Sweep, sweep_id, populate_existing=True)
    if row is None or row.tenant_id != tenant:
        raise NotFound("sweep", sweep_id)
    return row


def list_sweep_rows(session: Session, limit: int, after: tuple[datetime, str] | None, *, tenant: str) -> list[Sweep]:
    query = select(Sweep).where(Sweep.tenant_id == tenant)
    if after is not None:
        query = query.where(tuple_(Sweep.created_at, Sweep.id) < after)
    return list(session.scalars(query.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit)))


def member_counts(session: Session, sweep_id: str) -> tuple[dict[str, int], dict[str, int], int]:
    """(members by status, finished members by stop reason, steps done by all members)."""
    rows = session.execute(
        select(_jobs.c.status, _jobs.c.stop_reason, func.count(), func.sum(_jobs.c.step))
        .where(_jobs.c.sweep_id == sweep_id).group_by(_jobs.c.status, _jobs.c.stop_reason)
    ).all()
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    steps = 0
    for status, reason, n, done in rows:
        counts[status] = counts.get(status, 0) + n
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + n
        steps += int(done or 0)
    return counts, reasons, steps


def last_finish(sweep_id: Any) -> Select:
    """When a sweep's last member ended: the sweep's own ``finished_at``. ``sweep_id`` is an id,
    or ``Sweep.id`` for a subquery of a statement over sweeps."""
    return select(func.max(_jobs.c.finished_at)).where(_jobs.c.sweep_id == sweep_id)


def last_finished_at(session: Session, sweep_id: str) -> datetime | None:
    return as_utc(session.scalar(last_finish(sweep_id)))


def leaderboard(session: Session, sweep_id: str, limit: int = 10) -> list[LeaderEntry]:
    """Members with an SSR, lowest first (ties by id); diverged ones after all others: their SSR
    is the last finite one, often step 0's, which says nothing of how well they trained."""
    members = (select(_jobs.c.id, _jobs.c.ssr, _jobs.c.step, _jobs.c.status, _jobs.c.stop_reason, _jobs.c.sweep_values)
               .where(_jobs.c.sweep_id == sweep_id, _jobs.c.ssr.is_not(None)).order_by(_jobs.c.ssr, _jobs.c.id))
    rows = session.execute(members.where(_jobs.c.status != "diverged").limit(limit)).all()
    if len(rows) < limit:
        rows += session.execute(members.where(_jobs.c.status == "diverged").limit(limit - len(rows))).all()
    return [LeaderEntry(job_id=r.id, ssr=finite_or_none(r.ssr), step=r.step, status=r.status,
                        stop_reason=r.stop_reason, values=r.sweep_values or {}) for r in rows]


def cancel_members(session: Session, sweep_id: str) -> int | None:
    """Queued (and parked) members never start; running ones stop at their next checkpoint.
    ONE statement for both: a member a worker parks meanwhile (running -> queued) is re-checked
    on its new row by PostgreSQL and cancelled, never skipped by two separate updates. Returns
    how many members ended here (the queued ones), or None when the sweep was cancelled already
    (by a concurrent cancel: the conditional UPDATE lets exactly one of two win)."""
    won = session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.cancelled.is_(False))
                          .values(cancelled=True)).rowcount
    if not won:
        return None
    queued = _jobs.c.status == "queued"
    statuses = session.scalars(
        update(_jobs).where(_jobs.c.sweep_id == sweep_id, _jobs.c.status.in_(UNFINISHED))
        .values(status=case((queued, "cancelled"), else_=_jobs.c.status),
                finished_at=case((queued, utcnow()), else_=_jobs.c.finished_at),
                cancel_requested=case((queued, _jobs.c.cancel_requested), else_=True))
        .returning(_jobs.c.status)
    )
    return sum(1 for status in statuses if status == "cancelled")  # those that ended now


def created_at(row: Sweep) -> datetime:
    return as_utc(row.created_at)
