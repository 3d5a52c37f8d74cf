"""What the metrics scrape reads from the database: a handful of grouped queries whose cost
grows with the jobs of the watched sweeps, never with all history (docs/design.md, "Metrics")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from services.db.models import Job, SchedulerLease, Sweep, Worker
from services.db.repository import as_utc
from services.db.scheduling import LEADER

_jobs = Job.__table__
_UNFINISHED = ("queued", "running")


@dataclass
class SweepState:
    id: str
    name: str
    members: int
    counts: dict[str, int] = field(default_factory=dict)
    steps_done: int = 0
    steps_planned: int = 0
    best_ssr: float | None = None
    median_ssr: float | None = None


def jobs_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(_jobs.c.status, func.count()).group_by(_jobs.c.status)).all())


def waiting_by_queue(session: Session) -> dict[str, tuple[int, datetime]]:
    """Per queue: jobs waiting for a worker (parked sweep members excluded) and the oldest's submit time."""
    rows = session.execute(
        select(_jobs.c.device, func.count(), func.min(_jobs.c.created_at))
        .where(_jobs.c.status == "queued", _jobs.c.rung.is_(None)).group_by(_jobs.c.device)
    )
    return {device: (n, as_utc(oldest)) for device, n, oldest in rows}


def live_workers(session: Session, now: datetime, lease_seconds: float) -> dict[str, int]:
    """Worker processes that renewed their row within a lease, per queue they serve."""
    rows = session.execute(select(Worker.queues).where(Worker.seen_at >= now - timedelta(seconds=lease_seconds)))
    found: dict[str, int] = {}
    for (queues,) in rows:
        for queue in queues.split(","):
            found[queue] = found.get(queue, 0) + 1
    return found


def scheduler_acted_at(session: Session) -> datetime | None:
    return as_utc(session.scalar(select(SchedulerLease.acted_at).where(SchedulerLease.name == LEADER)))


def watched_sweeps(session: Session, now: datetime, window_seconds: float, limit: int) -> list[SweepState]:
    """Sweeps still running or finished within the window, newest first, at most ``limit``:
    the bound on per-sweep series however many sweeps a deployment has run."""
    recent = or_(Sweep.finished_at.is_(None), Sweep.finished_at >= now - timedelta(seconds=window_seconds))
    rows = session.execute(
        select(Sweep.id, Sweep.name, Sweep.members).where(recent)
        .order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit)
    )
    states = {r.id: SweepState(r.id, r.name, r.members) for r in rows}
    if states:
        _fill_counts(session, states)
        _fill_medians(session, states)
    return list(states.values())


def _fill_counts(session: Session, states: dict[str, SweepState]) -> None:
    """Counts by status, progress and best SSR in one grouped pass. A finished member has done
    all it will do: it counts as its planned steps, so a finished sweep is at 100 %."""
    unfinished = _jobs.c.status.in_(_UNFINISHED)
    done = case((unfinished, _jobs.c.step), else_=func.coalesce(_jobs.c.max_steps, _jobs.c.step))
    rows = session.execute(
        select(_jobs.c.sweep_id, _jobs.c.status, func.count(), func.sum(done),
               func.sum(func.coalesce(_jobs.c.max_steps, _jobs.c.step)), func.min(_jobs.c.ssr))
        .where(_jobs.c.sweep_id.in_(list(states))).group_by(_jobs.c.sweep_id, _jobs.c.status)
    )
    for sweep_id, status, n, steps, planned, best in rows:
        state = states[sweep_id]
        state.counts[status] = n
        state.steps_done += int(steps or 0)
        state.steps_planned += int(planned or 0)
        if best is not None and status != "diverged" and (state.best_ssr is None or best < state.best_ssr):
            state.best_ssr = float(best)


def _fill_medians(session: Session, states: dict[str, SweepState]) -> None:
    """The median of the members' current SSR (diverged members left out), by window functions
    that SQLite and PostgreSQL share: the mean of the one or two middle ranks."""
    ranked = (
        select(_jobs.c.sweep_id, _jobs.c.ssr,
               func.row_number().over(partition_by=_jobs.c.sweep_id, order_by=_jobs.c.ssr).label("rank"),
               func.count().over(partition_by=_jobs.c.sweep_id).label("n"))
        .where(_jobs.c.sweep_id.in_(list(states)), _jobs.c.ssr.is_not(None), _jobs.c.status != "diverged")
        .subquery()
    )
    middle = or_(ranked.c.rank == (ranked.c.n + 1) // 2, ranked.c.rank == (ranked.c.n + 2) // 2)
    rows = session.execute(select(ranked.c.sweep_id, func.avg(ranked.c.ssr)).where(middle).group_by(ranked.c.sweep_id))
    for sweep_id, median in rows:
        states[sweep_id].median_ssr = None if median is None else float(median)

