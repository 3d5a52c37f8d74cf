"""The scheduler: the one publisher of training tasks, and the reconcile loop that makes the
database's view of what still has to run come true.

Each pass is level-triggered (docs/design.md, "Scheduler"): it reads what should be true and
acts, so a missed wake-up, a lost message or a dead worker is repaired by the next pass, and
every action is safe to repeat (claims are fenced). Only the holder of the leader lease acts;
other schedulers wait to take over. The policy lives in pure modules (``services.packing``,
``services.halving``); this module reads, decides with them, writes and publishes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from services import halving, metrics, packing
from services.config import Settings, get_settings
from services.db import idempotency as keys
from services.db import scheduling as store
from services.db.session import session_scope
from services.errors import DomainError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.doorbell import Doorbell

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    """What one pass did (logged, and read by tests)."""

    leader: bool = False
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    cut: list[tuple[str, int, int, int]] = field(default_factory=list)  # sweep, rung, kept, stopped
    packs: list[packing.PackPlan] = field(default_factory=list)
    saturated: bool = False  # jobs wait and every worker of their queues is busy
    hold: float = 0.0  # seconds until jobs held back for a fuller pack are sent (packing.linger)


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_pass(holder: str, settings: Settings | None = None,
             publish: Callable[[list[str], str], None] | None = None, maintain: bool = True) -> PassReport:
    """One reconcile pass if ``holder`` is (or becomes) the leader. ``maintain`` renews the
    leader lease and requeues lapsed leases; a wake-up between two maintenance passes (which
    the caller makes at least every period, well within the lease) only cuts and dispatches,
    so a burst of submits costs the database no write but the dispatch stamps."""
    settings = settings or get_settings()
    report = PassReport()
    started = time.perf_counter()
    if maintain:
        with session_scope() as session:
            now = store.db_now(session)
            if not store.hold_leader(session, holder, settings.scheduler_lease_seconds, now):
                return report
            store.end_stuck_sessions(session, settings.lease_seconds)
            report.requeued, report.failed, report.cancelled = store.requeue_expired(
                session, now, settings.lease_seconds, settings.max_attempts)
            store.forget_dead_workers(session, now, 10 * settings.lease_seconds)
            store.stamp_finished_sweeps(session, now)
            keys.forget_expired(session, now - timedelta(seconds=settings.idempotency_key_ttl))
        metrics.LOST_LEASES.inc(report.requeued + report.failed)
        metrics.count_finished({"failed": report.failed, "cancelled": report.cancelled})
    report.leader = True
    report.cut = cut_rungs()
    report.packs, report.saturated, report.hold = dispatch(settings, publish or _publish)
    metrics.SCHEDULER_PASS.observe(time.perf_counter() - started)
    return report


def cut_rungs() -> list[tuple[str, int, int, int]]:
    """Decide every rung whose members have all arrived (one transaction per sweep)."""
    done = []
    with session_scope() as session:
        waiting = store.parked_rungs(session)
    for sweep_id, rung in waiting:
        with session_scope(write=True) as session:
            rule = store.sweep_halving(session, sweep_id)
            parked = store.rung_ready(session, sweep_id, rung)
            if rule is None or parked is None:
                continue
            keep, stop = halving.survivors(parked, int(rule["reduction_factor"]))
            cancelled = store.sweep_cancelled(session, sweep_id)
            if cancelled:  # every member ends cancelled (a cancel is never an early stop)
                keep, stop = [], keep + stop
            ended = store.cut_rung(session, rung, keep, stop, store.db_now(session), cancelled)
        metrics.count_finished(ended)
        done.append((sweep_id, rung, len(keep), len(stop)))
        log.info("sweep %s rung %d: %d go on, %d stopped early, %d cancelled", sweep_id, rung, len(keep),
                 ended["succeeded"], ended["cancelled"])
    return done


def dispatch(settings: Settings,
             publish: Callable[[list[str], str], None]) -> tuple[list[packing.PackPlan], bool, float]:
    """Publish one task per pack, as many packs as a queue has free workers: jobs that arrive
    while every worker is busy wait in the database and go out together, as one larger pack,
    when a worker frees up (it rings the doorbell). A queue with no live worker known gets its
    new jobs at once (its messages wait in the broker for a worker to start), but no re-sends.
    Each queue is read apart, so one queue's backlog never hides another's jobs. Tiny jobs may
    be held back a moment for a fuller pack while another pack of their queue trains
    (``packing.linger``). Free workers are shared among tenants, each to the one with the
    fewest packs at work (``packing.fair_share``), not to the oldest backlog. Also says whether
    every queue with jobs waiting had no free worker (then only a freed one helps), and how long
    the soonest held queue waits."""
    plans, saturated, hold = [], False, 0.0
    # with the linger off (0 s), free slots alone decide
    stream = packing.Stream(settings.pack_linger_cost) if settings.pack_linger_seconds > 0 else None
    with session_scope() as session:
        now = store.db_now(session)
        queues = store.waiting_queues(session)
        free, tenants_busy = (store.worker_slots(session, now, settings.lease_seconds,
                                                 settings.redispatch_seconds) if queues else ({}, {}))
        in_flight = store.in_flight_by_tenant(session, now, settings.redispatch_seconds) if queues else {}
        saturated = bool(queues) and all(free.get(device) is not None and free[device] <= 0 for device in queues)
        for device in queues:
            slots = free.get(device)
            if slots is not None and slots <= 0:
                continue
            queued = _waiting(session, settings, now, device, slots, in_flight)
            busy = sum(tenants_busy.get(device, {}).values())
            wait = packing.linger(queued, busy, now, settings.pack_linger_seconds,
                                  settings.pack_linger_cost)
            if wait > 0:
                hold = wait if hold == 0 else min(hold, wait)
                continue
            cut = packing.plan_packs(queued, {device: slots or 0}, settings.pack_max_cost, settings.pack_max_members,
                                     stream)
            cut = cut if slots is None else packing.fair_share(cut, tenants_busy.get(device, {}), slots)
            _count_in_flight(in_flight, queued, cut)
            plans += cut
    for plan in plans:
        # Stamped before the publish: the claim that follows the message never races the stamp
        # for the same rows. A failed publish clears it, and a crash in between costs one
        # redispatch_seconds (the job then looks like one whose message was lost).
        with session_scope() as session:
            store.mark_dispatched(session, plan.job_ids, store.db_now(session))
        try:
            publish(plan.job_ids, plan.device)
        except Exception:
            with session_scope() as session:
                store.mark_dispatched(session, plan.job_ids, None)
            raise
        metrics.SCHEDULER_DISPATCHED.labels(plan.device).inc(len(plan.job_ids))
    if plans:
        log.info("dispatched %d job(s) in %d pack(s)", sum(len(p.job_ids) for p in plans), len(plans))
    return plans, saturated, hold


def _waiting(session: Session, settings: Settings, now: datetime, device: str, slots: int | None,
             in_flight: dict[str, int]) -> list[packing.QueuedJob]:
    """A queue's oldest dispatchable jobs within every tenant's running limit, oldest first (at
    most ``scheduler_batch`` a read). With ``slots`` free workers known, a read that came back
    full is followed by one without its tenants, at most ``slots`` more: a tenant's backlog of
    a batch hid every other tenant's jobs behind it, whose free workers (``packing.fair_share``)
    then went to that backlog until it drained below a batch. Only then: such a read scans the
    backlog it skips (500k queued jobs of one tenant: ~0.15 s on PostgreSQL), worth it for a
    worker to share, not in every pass of a busy queue or one with no worker known (``None``,
    whose messages just wait in the broker)."""
    stale_too = slots is not None
    excluded = packing.full_tenants(in_flight, settings.tenant_max_running)
    found: list[packing.QueuedJob] = []
    for _ in range(1 + (slots or 0)):
        kept, seen, full = _oldest(session, settings, now, device, stale_too, in_flight, excluded)
        found += kept
        if not full:
            break
        excluded |= seen  # a batch of theirs is here: read the other tenants' behind it
    return found


def _oldest(session: Session, settings: Settings, now: datetime, device: str, stale_too: bool,
            in_flight: dict[str, int], excluded: set[str]) -> tuple[list[packing.QueuedJob], set[str], bool]:
    """The oldest dispatchable jobs (at most ``scheduler_batch``) of the tenants not
    ``excluded`` within their running limits, the tenants read, and whether the last read was
    full. Tenants at their limit are left out of the read itself: read first and dropped after,
    one tenant's backlog of a batch hid every other tenant's jobs while workers idled. A tenant
    whose room runs out within a batch keeps its oldest jobs and is left out of one more read;
    in the usual case (no tenant at its limit) one read is all. Adds to ``excluded``."""
    limit, size = settings.tenant_max_running, settings.scheduler_batch
    carried: list[packing.QueuedJob] = []  # the jobs kept of tenants whose room ran out
    seen: set[str] = set()
    while True:
        read = store.dispatchable(session, now, settings.redispatch_seconds, size, device, stale_too, excluded)
        seen |= {job.tenant for job in read}
        kept = packing.within_tenant_limit(read, in_flight, limit)
        ran_out = packing.tenants_left_out(read, kept)
        if len(read) < size or not ran_out:
            return (packing.oldest_first(carried + kept)[:size] if carried else kept), seen, len(read) == size
        carried += [job for job in kept if job.tenant in ran_out]
        excluded |= ran_out


def _count_in_flight(in_flight: dict[str, int], queued: list[packing.QueuedJob], plans: list[packing.PackPlan]) -> None:
    """Add the planned jobs to their tenants' counts, for the next queue's limit."""
    planned = {job_id for plan in plans for job_id in plan.job_ids}
    for job in queued:
        if job.id in planned:
            in_flight[job.tenant] = in_flight.get(job.tenant, 0) + 1


def _publish(job_ids: list[str], device: str) -> None:
    from services import queue  # Celery only where tasks are sent

    queue.publish_pack(job_ids, device)


def serve(settings: Settings | None = None, stop: Callable[[], bool] = lambda: False) -> None:
    """Run passes until ``stop()``: on every doorbell ring, and at least every period (with
    maintenance at most once a period). A pass that fails (database or broker down) is logged
    and retried at the next wake-up."""
    from services.doorbell import Doorbell

    settings = settings or get_settings()
    holder, bell = holder_name(), Doorbell(settings)
    log.info("scheduler %s started", holder)
    maintained = -float("inf")
    try:
        while not stop():
            started = time.monotonic()
            maintain = started - maintained >= min(settings.scheduler_period, settings.scheduler_lease_seconds / 3)
            report = _safe_pass(holder, settings, maintain)
            if report is not None and maintain:
                maintained = started  # the lease was renewed no earlier than this
            if report is not None and report.leader:
                until = maintained + settings.scheduler_period
                if report.hold > 0:  # held jobs are sent when their wait is over
                    until = min(until, time.monotonic() + report.hold)
                _wait(bell, until, report.saturated or report.hold > 0)
            else:
                maintained = -float("inf")  # not the leader (or failed): try again next period
                time.sleep(settings.scheduler_period)
    finally:
        bell.close()
        _resign(holder)


def _wait(bell: Doorbell, until: float, saturated: bool) -> None:
    """Until a ring or the monotonic time ``until``. While every worker is busy (``saturated``)
    or jobs are held for a fuller pack, a ring that only announces new work is let pass: the
    pass it would cause finds no free slot, or holds the jobs again. A freed worker's ring, or
    ``until``, ends the wait."""
    while bell.wait(max(0.0, until - time.monotonic())) and saturated and not bell.freed:
        pass


def _safe_pass(holder: str, settings: Settings, maintain: bool) -> PassReport | None:
    try:
        return run_pass(holder, settings, maintain=maintain)
    except (DomainError, OSError, ConnectionError) as exc:
        log.warning("scheduler pass failed (%s); retrying", exc)
    except Exception:  # noqa: BLE001 (kombu/redis errors have no common base we can name here)
        log.exception("scheduler pass failed; retrying")
    return None


def _resign(holder: str) -> None:
    try:
        with session_scope() as session:
            store.release_leader(session, holder)
    except DomainError:
        log.warning("could not release the scheduler lease; it lapses by itself")
