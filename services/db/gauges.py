"""What the metrics scrape reads from the database: a handful of grouped queries whose cost
grows with the jobs of the watched sweeps and the waiting ones (docs/design.md, "Metrics"), but
for ``jobs_by_status``: ``descent_jobs{status}`` counts every job ever stored, a scan of all of
them at each reading (about 35 ms at 440,000 jobs on PostgreSQL here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from services.db.models import Job, SchedulerLease, Sweep
from services.db.repository import as_utc
from services.db.scheduling import LEADER

_jobs = Job.__table__
_UNFINISHED = ("queued", "running")
_STATUSES = ("queued", "running", "succeeded", "diverged", "failed", "cancelled")


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
    scored: int = 0  # members with an SSR, diverged ones left out


def jobs_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(_jobs.c.status, func.count()).group_by(_jobs.c.status)).all())


def waiting_by_queue(session: Session) -> dict[str, tuple[int, datetime]]:
    """Per queue: jobs waiting for a worker (parked sweep members excluded) and the oldest's submit time."""
    rows = session.execute(
        select(_jobs.c.device, func.count(), func.min(_jobs.c.created_at))
        .where(_jobs.c.status == "queued", _jobs.c.rung.is_(None)).group_by(_jobs.c.device)
    )
    return {device: (n, as_utc(oldest)) for device, n, oldest in rows}


def scheduler_acted_at(session: Session) -> datetime | None:
    return as_utc(session.scalar(select(SchedulerLease.acted_at).where(SchedulerLease.name == LEADER)))


def watched_sweeps(session: Session, now: datetime, window_seconds: float, limit: int) -> list[SweepState]:
    """Sweeps still running or finished within the window, at most ``limit``: the bound on
    per-sweep series however many sweeps a deployment has run. Running sweeps come first (newest
    first), then finished ones (newest first): however many short sweeps finish meanwhile, a
    long-running sweep keeps its series (DescentSweepStalled watches it); only more than
    ``limit`` running sweeps at once push the oldest running ones out."""
    recent = or_(Sweep.finished_at.is_(None), Sweep.finished_at >= now - timedelta(seconds=window_seconds))
    finished_last = case((Sweep.finished_at.is_(None), 0), else_=1)
    rows = session.execute(
        select(Sweep.id, Sweep.name, Sweep.members).where(recent)
        .order_by(finished_last, Sweep.created_at.desc(), Sweep.id.desc()).limit(limit)
    )
    states = {r.id: SweepState(r.id, r.name, r.members) for r in rows}
    if states:
        _fill_counts(session, states)
        _fill_medians(session, states)
    return list(states.values())


def _fill_counts(session: Session, states: dict[str, SweepState]) -> None:
    """Counts by status, progress and best SSR in one pass along the (sweep_id, ...) covering
    index, grouped by sweep alone (per-status counts are sums, so no sort). A finished member
    has done all it will do: it counts as its planned steps, so a finished sweep is at 100 %."""
    status, ssr = _jobs.c.status, _jobs.c.ssr
    planned = func.coalesce(_jobs.c.max_steps, _jobs.c.step)
    scored = case((status != "diverged", ssr))
    rows = session.execute(
        select(_jobs.c.sweep_id, *[func.sum(case((status == s, 1), else_=0)) for s in _STATUSES],
               func.sum(case((status.in_(_UNFINISHED), _jobs.c.step), else_=planned)), func.sum(planned),
               func.min(scored), func.count(scored))
        .where(_jobs.c.sweep_id.in_(list(states))).group_by(_jobs.c.sweep_id)
    )
    for sweep_id, *counts, done, planned_steps, best, n_scored in rows:
        state = states[sweep_id]
        state.counts = {s: int(n) for s, n in zip(_STATUSES, counts) if n}
        state.steps_done, state.steps_planned = int(done or 0), int(planned_steps or 0)
        state.best_ssr = None if best is None else float(best)
        state.scored = int(n_scored)


def _fill_medians(session: Session, states: dict[str, SweepState]) -> None:
    """The median of the members' current SSR (diverged members left out): the one or two middle
    values, read by offset along the (sweep_id, ssr) index, so a scrape walks half of each
    sweep's index entries and never sorts."""
    for state in states.values():
        if not state.scored:
            continue
        middle = session.scalars(
            select(_jobs.c.ssr)
            .where(_jobs.c.sweep_id == state.id, _jobs.c.ssr.is_not(None), _jobs.c.status != "diverged")
            .order_by(_jobs.c.ssr).offset((state.scored - 1) // 2).limit(2 - state.scored % 2)
        ).all()
        state.median_ssr = float(sum(middle) / len(middle)) if middle else None
