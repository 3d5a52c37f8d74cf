"""Serving metrics: the text of ``/metrics`` and the port a worker or scheduler serves.

With ``PROMETHEUS_MULTIPROC_DIR`` set, a scrape merges the files of every process that shares
the folder (a fresh registry per scrape, as prometheus-client's multiprocess guide asks);
without it (tests in one process) it reads this process's registry.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess, start_http_server

from services.metrics_dir import ENV

log = logging.getLogger(__name__)


def _process_registry() -> CollectorRegistry:
    if not os.environ.get(ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def render(with_database: bool = True) -> bytes:
    """The exposition text; ``with_database`` adds the gauges read from the database (the API's)."""
    text = generate_latest(_process_registry())
    if with_database:
        from services.metrics_db import DatabaseCollector

        registry = CollectorRegistry()
        registry.register(DatabaseCollector())
        text += generate_latest(registry)
    return text


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve this process tree's merged event metrics on ``port`` (a worker's parent, the
    scheduler): the one process of the tree that opens the port."""
    start_http_server(port, addr=host, registry=_process_registry())
    log.info("metrics on http://%s:%d/metrics", host, port)


def process_exited(pid: int | None = None) -> None:
    """Drop a dead process's live-gauge files (its counters stay: totals survive it)."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid or os.getpid())
