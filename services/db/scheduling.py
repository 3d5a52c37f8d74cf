"""Storage side of the scheduler: its leader lease, expired job leases, queued work, live
workers and successive-halving cuts. Times come from the database's clock (``db_now``) so
processes on machines with skewed clocks agree about who holds a lease."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import String, and_, bindparam, func, literal, or_, select, text, update
from sqlalchemy.orm import Session

from services.db.models import Job, SchedulerLease, Sweep, Worker, utcnow
from services.db.session import WORKER_APPLICATION, dialect_insert
from services.db.sweeps import last_finish
from services.halving import Parked
from services.packing import QueuedJob

_jobs = Job.__table__
LEADER = "scheduler"

# The statements of a dispatch pass are built once, with parameters: a burst of submits makes
# dozens of passes a second, and SQLAlchemy took 0.23-0.28 ms to build each statement against
# 0.05 ms to run it (SQLite, 1000 queued jobs; benchmarks/RESULTS.md, eleventh session).
_NEVER_SENT = _jobs.c.dispatched_at.is_(None)
_WAITING = and_(_jobs.c.status == "queued", _jobs.c.rung.is_(None))


def _dispatchable(stale_too: bool, excluding: bool):  # noqa: ANN202 (a Select)
    sent = or_(_NEVER_SENT, _jobs.c.dispatched_at < bindparam("stale_before")) if stale_too else _NEVER_SENT
    query = (
        select(_jobs.c.id, _jobs.c.pack_key, _jobs.c.device, _jobs.c.cost, _jobs.c.tenant_id, _jobs.c.created_at)
        .where(_WAITING, _jobs.c.device == bindparam("device"), sent)
        .order_by(_jobs.c.created_at, _jobs.c.id).limit(bindparam("limit"))
    )
    return query.where(_jobs.c.tenant_id.not_in(bindparam("excluded", expanding=True))) if excluding else query


_DISPATCHABLE = {(stale, excluding): _dispatchable(stale, excluding) for stale in (True, False) for excluding in (True, False)}
_IN_FLIGHT_BY_TENANT = (
    select(_jobs.c.tenant_id, func.count())
    .where(or_(_jobs.c.status == "running",
               and_(_jobs.c.status == "queued", _jobs.c.dispatched_at >= bindparam("sent_after"))))
    .group_by(_jobs.c.tenant_id)
)
_WAITING_QUEUES = select(_jobs.c.device).where(_WAITING).distinct()
_MARK_DISPATCHED = (
    update(_jobs).where(_jobs.c.id.in_(bindparam("ids", expanding=True)), _jobs.c.status == "queued")
    .values(dispatched_at=bindparam("at", type_=_jobs.c.dispatched_at.type))
)
_LIVE_WORKERS = select(Worker.queues).where(Worker.seen_at >= bindparam("seen_after"))
# By queue and tenant: a pack is one tenant's, so the tenants' counts add up to the queue's.
_BUSY_BY_QUEUE = (
    select(_jobs.c.device, _jobs.c.tenant_id,
           func.count(func.distinct(_jobs.c.worker_hostname + ":" + func.cast(_jobs.c.worker_pid, String))))
    .where(_jobs.c.status == "running").group_by(_jobs.c.device, _jobs.c.tenant_id)
)
# Each pack is stamped by its own statement, so its jobs share a dispatched_at of their own.
_SENT_BY_QUEUE = (
    select(_jobs.c.device, _jobs.c.tenant_id, func.count(func.distinct(_jobs.c.dispatched_at)))
    .where(_WAITING, _jobs.c.dispatched_at >= bindparam("sent_after"))
    .group_by(_jobs.c.device, _jobs.c.tenant_id)
)
_PARKED_RUNGS = (
    select(_jobs.c.sweep_id, func.min(_jobs.c.rung))
    .where(_jobs.c.status == "queued", _jobs.c.rung.is_not(None)).group_by(_jobs.c.sweep_id)
)


def db_now(session: Session) -> datetime:
    """PostgreSQL's clock (shared by every machine); SQLite is local, so the host's clock."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(text("SELECT clock_timestamp()")).astimezone(timezone.utc)
    return utcnow()


def hold_leader(session: Session, holder: str, seconds: float, now: datetime) -> bool:
    """Take or renew the leader lease; True when ``holder`` is the one scheduler that acts."""
    expires = now + timedelta(seconds=seconds)
    statement = dialect_insert(session, SchedulerLease).values(name=LEADER, holder=holder, expires_at=expires, acted_at=now)
    session.execute(statement.on_conflict_do_nothing(index_elements=["name"]))
    result = session.execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == LEADER,
               or_(SchedulerLease.holder == holder, SchedulerLease.expires_at < now))
        .values(holder=holder, expires_at=expires, acted_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def release_leader(session: Session, holder: str) -> None:
    """Let a successor act at once instead of after the lease runs out (graceful stop)."""
    session.execute(
        update(SchedulerLease).where(SchedulerLease.name == LEADER, SchedulerLease.holder == holder)
        .values(expires_at=datetime(1970, 1, 1, tzinfo=timezone.utc))
        .execution_options(synchronize_session=False)
    )


def requeue_expired(session: Session, now: datetime, lease_seconds: float,
                    max_attempts: int) -> tuple[int, int, int]:
    """Running jobs whose lease lapsed go back to the queue, or fail after ``max_attempts`` lost
    leases. Returns (requeued, failed, cancelled). The status change alone fences the old worker.
    Rows another transaction still locks are skipped (PostgreSQL): a stuck holder never stalls
    the pass, and the next pass takes them once ``end_stuck_sessions`` has freed them."""
    lapsed = and_(_jobs.c.status == "running", _jobs.c.heartbeat_at < now - timedelta(seconds=lease_seconds))
    ids = list(session.scalars(select(_jobs.c.id).where(lapsed).with_for_update(skip_locked=True)))
    if not ids:
        return 0, 0, 0
    expired = and_(_jobs.c.id.in_(ids), lapsed)
    cancelled = session.execute(  # a cancel was asked for: it ends here, at its last checkpoint
        update(_jobs).where(expired, _jobs.c.cancel_requested).values(status="cancelled", finished_at=now)
    ).rowcount
    failed = session.execute(
        update(_jobs).where(expired, _jobs.c.lost_leases + 1 >= max_attempts)
        .values(status="failed", lost_leases=_jobs.c.lost_leases + 1, finished_at=now,
                error=literal(f"gave up after {max_attempts} attempts: each time the worker stopped "
                              "renewing its lease (killed, paused or cut off) before the job finished"))
    ).rowcount
    requeued = session.execute(
        update(_jobs).where(expired)
        .values(status="queued", lost_leases=_jobs.c.lost_leases + 1, dispatched_at=None, heartbeat_at=None)
    ).rowcount
    return requeued, failed, cancelled


def end_stuck_sessions(session: Session, seconds: float) -> int:
    """End worker sessions whose transaction has been open longer than ``seconds`` (a lease):
    ours last a chunk write, so such a session belongs to a paused or cut-off worker, and its
    row locks would keep its jobs from being taken over. PostgreSQL's idle-in-transaction timeout
    misses a client paused inside a pipelined ``executemany`` (the server waits on the client
    then, in neither the idle nor the statement state). The worker's writes are fenced anyway:
    once its jobs are requeued it writes nothing. Returns how many sessions were ended."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    return len(session.execute(text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE :name AND pid <> pg_backend_pid() "
        "AND xact_start < clock_timestamp() - make_interval(secs => :seconds)"
    ), {"name": f"{WORKER_APPLICATION}:%", "seconds": seconds}).all())


def dispatchable(session: Session, now: datetime, redispatch_seconds: float, limit: int,
                 device: str, stale_too: bool = True, excluded: Collection[str] = ()) -> list[QueuedJob]:
    """A queue's jobs never dispatched, or (``stale_too``) whose message has not started them in
    time, oldest first; parked members (waiting for their rung's cut) are not dispatchable.
    ``excluded`` tenants (at their running limit) are left out here, not after the read: their
    backlog would otherwise fill the ``limit`` rows and hide every other tenant's jobs. With none
    excluded (the usual case) the query is the plain walk along ``ix_jobs_waiting``."""
    params = {"device": device, "limit": limit, "stale_before": now - timedelta(seconds=redispatch_seconds),
              "excluded": sorted(excluded)}
    query = _DISPATCHABLE[stale_too, bool(excluded)]
    return [QueuedJob(r.id, r.pack_key, r.device, r.cost, r.tenant_id, r.created_at)
            for r in session.execute(query, params)]


def in_flight_by_tenant(session: Session, now: datetime, redispatch_seconds: float) -> dict[str, int]:
    """Per tenant: jobs running, or dispatched recently enough that their message is on its way
    (a re-send of a lost one does not count twice: it is the same queued row)."""
    rows = session.execute(_IN_FLIGHT_BY_TENANT, {"sent_after": now - timedelta(seconds=redispatch_seconds)})
    return {tenant: n for tenant, n in rows}


def waiting_queues(session: Session) -> list[str]:
    """Queues with at least one dispatchable-or-held job (one row per queue: cheap)."""
    return list(session.execute(_WAITING_QUEUES).scalars())


def mark_dispatched(session: Session, job_ids: Sequence[str], now: datetime | None) -> None:
    """Stamp the queued jobs of a pack as sent at ``now`` (None: not sent after all)."""
    session.execute(_MARK_DISPATCHED, {"ids": list(job_ids), "at": now})


def live_workers(session: Session, now: datetime, lease_seconds: float) -> dict[str, int]:
    """Worker processes that renewed their row within a lease, per queue they serve (what the
    scheduler fills, the metrics show and a queued job's read counts)."""
    live: dict[str, int] = {}
    rows = session.execute(_LIVE_WORKERS, {"seen_after": now - timedelta(seconds=lease_seconds)})
    for queues in rows.scalars():
        for queue in queues.split(","):
            live[queue] = live.get(queue, 0) + 1
    return live


def worker_slots(session: Session, now: datetime, lease_seconds: float,
                 redispatch_seconds: float) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Per queue, free slots: live worker processes, less those training a pack, less packs
    published and not yet claimed (a queue missing has no live worker known); and per queue the
    packs training or on their way to a worker by tenant (tenant -> packs; their sum is the
    queue's busy count), by which the scheduler shares free workers (``packing.fair_share``)."""
    live = live_workers(session, now, lease_seconds)
    busy = session.execute(_BUSY_BY_QUEUE).all()
    in_flight = session.execute(_SENT_BY_QUEUE, {"sent_after": now - timedelta(seconds=redispatch_seconds)}).all()
    by_tenant: dict[str, dict[str, int]] = {}
    for device, tenant, n in [*busy, *in_flight]:
        tenants = by_tenant.setdefault(device, {})
        tenants[tenant] = tenants.get(tenant, 0) + n
        if device in live:
            live[device] -= n
    return live, by_tenant


def register_worker(session: Session, name: str, queues: str, hostname: str, pid: int) -> None:
    """Insert or refresh this worker process's row (its heartbeat)."""
    now = db_now(session)
    statement = dialect_insert(session, Worker).values(
        name=name, queues=queues, hostname=hostname, pid=pid, started_at=now, seen_at=now)
    session.execute(statement.on_conflict_do_update(index_elements=["name"], set_={"seen_at": now}))


def quiet_workers_on(session: Session, hostname: str, seconds: float) -> list[tuple[str, int]]:
    """(name, pid) of the worker rows of ``hostname`` not renewed for ``seconds``."""
    since = db_now(session) - timedelta(seconds=seconds)
    rows = session.execute(select(Worker.name, Worker.pid).where(Worker.hostname == hostname, Worker.seen_at < since))
    return [(name, pid) for name, pid in rows]


def forget_worker(session: Session, name: str) -> None:
    session.execute(Worker.__table__.delete().where(Worker.name == name))


def stamp_finished_sweeps(session: Session, now: datetime) -> int:
    """Sweeps whose last member just finished get their ``finished_at``: when that member ended,
    as reads give it before this stamp (dashboards keep a finished sweep's series for a while; a
    sweep's status itself is computed from its members)."""
    unfinished = (select(_jobs.c.id).where(_jobs.c.sweep_id == Sweep.id, _jobs.c.status.in_(("queued", "running")))
                  .exists())
    last = last_finish(Sweep.id).scalar_subquery()
    return session.execute(
        update(Sweep).where(Sweep.finished_at.is_(None), ~unfinished).values(finished_at=func.coalesce(last, now))
        .execution_options(synchronize_session=False)
    ).rowcount


def forget_dead_workers(session: Session, now: datetime, seconds: float) -> None:
    session.execute(Worker.__table__.delete().where(Worker.seen_at < now - timedelta(seconds=seconds)))


# --- successive halving -----------------------------------------------------------------------


def parked_rungs(session: Session) -> list[tuple[str, int]]:
    """(sweep id, lowest parked rung) of every sweep with members waiting for a cut."""
    return [(sweep_id, rung) for sweep_id, rung in session.execute(_PARKED_RUNGS)]


def rung_ready(session: Session, sweep_id: str, rung: int) -> list[Parked] | None:
    """The members parked at ``rung`` once no other member can still arrive there, else None.

    Every unfinished member not parked at ``rung`` or above may still arrive: one waiting in the
    queue (its ``rung`` NULL, so the test must not lean on SQL's NULL comparisons), one being
    trained, one parked below. One parked above has passed this rung already: only a sweep cut by
    an older release holds such members, and they must not keep its lowest rung from its cut."""
    unfinished = (_jobs.c.sweep_id == sweep_id) & _jobs.c.status.in_(("queued", "running"))
    past = (_jobs.c.status == "queued") & _jobs.c.rung.is_not(None) & (_jobs.c.rung >= rung)
    at_rung = (_jobs.c.status == "queued") & (_jobs.c.rung == rung)
    others = session.scalar(select(func.count()).where(unfinished, ~past))
    if others:
        return None
    rows = session.execute(select(_jobs.c.id, _jobs.c.ssr).where(_jobs.c.sweep_id == sweep_id, at_rung))
    return [Parked(r.id, r.ssr) for r in rows]


def cut_rung(session: Session, rung: int, keep: Sequence[str], stop: Sequence[str], now: datetime,
             cancelled: bool = False) -> dict[str, int]:
    """Winners go back to the queue; the rest end succeeded with stop reason early_stopped,
    keeping their history and checkpoint at the rung. A member whose cancel was asked for (every
    member, in a ``cancelled`` sweep) ends cancelled instead, winner or not: a cancel never
    becomes an early stop or more training. Returns how many ended, by status."""
    at_rung = (_jobs.c.status == "queued") & (_jobs.c.rung == rung)
    wanted = at_rung if cancelled else at_rung & _jobs.c.cancel_requested
    ended = {"cancelled": 0, "succeeded": 0}
    for ids in _batches([*keep, *stop]):
        ended["cancelled"] += session.execute(update(_jobs).where(_jobs.c.id.in_(ids), wanted).values(
            status="cancelled", finished_at=now)).rowcount
    for ids in _batches(stop):
        ended["succeeded"] += session.execute(update(_jobs).where(_jobs.c.id.in_(ids), at_rung).values(
            status="succeeded", stop_reason="early_stopped", finished_at=now)).rowcount
    for ids in _batches(keep):
        session.execute(update(_jobs).where(_jobs.c.id.in_(ids), at_rung).values(rung=None, dispatched_at=None))
    return ended


def sweep_halving(session: Session, sweep_id: str) -> dict | None:
    spec = session.scalar(select(Sweep.spec).where(Sweep.id == sweep_id))
    return None if spec is None else spec.get("early_stopping")


def sweep_cancelled(session: Session, sweep_id: str) -> bool:
    return bool(session.scalar(select(Sweep.cancelled).where(Sweep.id == sweep_id)))


def _batches(ids: Sequence[str], size: int = 1000) -> list[list[str]]:
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]
