"""Gauges read from the database at scrape time (the state half of ``services.metrics``).

A custom collector cannot live inside prometheus-client's multiprocess mode, so the serving
process registers this one beside the multiprocess collector; only the API serves it, so a
deployment with many workers still exports each of these series once.

Reading 50 sweeps of 1000 members costs tens of milliseconds, more than a scrape should wait,
so a scrape answers with the snapshot taken right after the previous scrape and starts the next
one in the background: the gauges are one scrape interval old, never older than
``metrics_max_age`` (a scrape after a longer pause reads the database itself; 0 always does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.config import Settings, get_settings
from services.db import gauges
from services.db.scheduling import db_now, live_workers
from services.db.session import session_scope
from services.metrics import QUEUES
from services.spec import FINISHED

log = logging.getLogger(__name__)
STATUSES = ("queued", "running", *FINISHED)


class _Snapshots:
    """The latest complete reading, and at most one reading under way (per process)."""

    def __init__(self) -> None:
        self.latest: tuple[float, list[GaugeMetricFamily]] | None = None
        self.lock = threading.Lock()
        self.reading = False

    def get(self, settings: Settings) -> tuple[float, list[GaugeMetricFamily]]:
        """(age in seconds, families); raises when the database cannot be read synchronously."""
        latest = self.latest
        if latest is None or time.monotonic() - latest[0] > settings.metrics_max_age:
            return 0.0, self.read(settings)
        with self.lock:
            start, self.reading = not self.reading, True
        if start:
            threading.Thread(target=self._read_quietly, args=(settings,), daemon=True).start()
        return time.monotonic() - latest[0], latest[1]

    def read(self, settings: Settings) -> list[GaugeMetricFamily]:
        started = time.monotonic()
        families = list(_read(settings))
        self.latest = (started, families)
        return families

    def _read_quietly(self, settings: Settings) -> None:
        try:
            self.read(settings)
        except Exception as exc:  # noqa: BLE001 (the next scrape retries, or reports the database down)
            log.warning("metrics: database unreadable: %s", exc)
        finally:
            self.reading = False


_snapshots = _Snapshots()


def forget() -> None:
    """Drop the latest reading (tests that switch databases call this)."""
    _snapshots.latest = None


class DatabaseCollector(Collector):
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("descent_database_up", "1 when the scrape could read the database")
        try:
            age, families = _snapshots.get(self.settings or get_settings())
        except Exception as exc:  # noqa: BLE001 (a scrape must answer even with the database down)
            log.warning("metrics: database unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _family("descent_database_gauges_age_seconds", "Age of the database reading these gauges show",
                      [], {(): age})
        yield from families


def _read(settings: Settings) -> Iterator[GaugeMetricFamily]:
    """One reading: a handful of grouped queries in one transaction (services/db/gauges.py)."""
    with session_scope() as session:
        now = db_now(session)
        statuses = gauges.jobs_by_status(session)
        waiting = gauges.waiting_by_queue(session)
        workers = live_workers(session, now, settings.lease_seconds)
        acted = gauges.scheduler_acted_at(session)
        sweeps = gauges.watched_sweeps(session, now, settings.metrics_sweep_window, settings.metrics_max_sweeps)
    yield _family("descent_jobs", "Jobs by status", ["status"],
                  {(s,): statuses.get(s, 0) for s in STATUSES})
    queues = sorted(set(QUEUES) | set(waiting) | set(workers))
    yield _family("descent_queue_jobs", "Jobs waiting for a worker, per queue", ["queue"],
                  {(q,): waiting.get(q, (0, now))[0] for q in queues})
    yield _family("descent_queue_oldest_seconds", "Age of the oldest job waiting for a worker", ["queue"],
                  {(q,): max(0.0, (now - waiting[q][1]).total_seconds()) if q in waiting else 0.0 for q in queues})
    yield _family("descent_workers", "Live worker processes, per queue they serve", ["queue"],
                  {(q,): workers.get(q, 0) for q in queues})
    if acted is not None:
        yield _family("descent_scheduler_last_action_age_seconds",
                      "Seconds since the leading scheduler last acted", [], {(): (now - acted).total_seconds()})
    yield from _sweep_families(sweeps)


def _sweep_families(sweeps: list[gauges.SweepState]) -> Iterator[GaugeMetricFamily]:
    best, median, jobs, progress, diverged = {}, {}, {}, {}, {}
    for sweep in sweeps:
        key = (sweep_label(sweep.name, sweep.id),)
        if key in progress:  # two tails alike (2^-48 a pair): never merge two sweeps' series
            key = (f"{sweep.name} · {sweep.id}",)
        if sweep.best_ssr is not None:
            best[key] = sweep.best_ssr
        if sweep.median_ssr is not None:
            median[key] = sweep.median_ssr
        for status in STATUSES:
            jobs[key + (status,)] = sweep.counts.get(status, 0)
        progress[key] = sweep.steps_done / sweep.steps_planned if sweep.steps_planned else 0.0
        diverged[key] = sweep.counts.get("diverged", 0) / sweep.members if sweep.members else 0.0
    yield _family("descent_sweep_best_ssr", "Lowest SSR of a sweep's members", ["sweep"], best)
    yield _family("descent_sweep_median_ssr", "Median SSR of a sweep's members (diverged left out)", ["sweep"], median)
    yield _family("descent_sweep_jobs", "A sweep's members by status", ["sweep", "status"], jobs)
    yield _family("descent_sweep_progress_ratio", "Steps done / steps planned of a sweep", ["sweep"], progress)
    yield _family("descent_sweep_diverged_ratio", "Fraction of a sweep's members that diverged", ["sweep"], diverged)


# Ids are UUIDv7 (services/db/repository.py): their first 12 hex digits are the creation time
# in milliseconds, the same first 8 for ~65 s, so a prefix would give two sweeps of one name made
# within a minute one label (and one series). The last 12 are random bits (48 of them).
SWEEP_ID_TAIL = 12


def sweep_label(name: str, sweep_id: str) -> str:
    """Readable in a legend, unique by the random tail of the id: ``lr-scan · 5539e3ec630b``
    (the Grafana sweep picker shows the same text, deploy/grafana/generate_dashboards.py)."""
    return f"{name} · {sweep_id[-SWEEP_ID_TAIL:]}"


def _family(name: str, documentation: str, labels: list[str],
            values: dict[tuple[str, ...], float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), float(value))
    return family
