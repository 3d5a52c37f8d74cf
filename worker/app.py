"""The Celery worker process: the shared configuration plus per-process setup after fork.

Start it with ``celery -A worker.app worker -Q cpu`` (or ``-Q gpu`` with
``DESCENT_ENGINE_BACKEND=cupy``); each prefork child builds its own database engine.
"""

from __future__ import annotations

import os
import socket

from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from services import heartbeat, metrics_export
from services.config import get_settings
from services.db.session import reset_engine
from services.queue import make_celery

app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)


@worker_process_init.connect
def _fresh_engine_per_child(**_: object) -> None:
    """A pool inherited through fork would share sockets with the parent (hangs, corruption).
    Each child then announces itself and renews its jobs' leases from its own thread."""
    reset_engine()
    heartbeat.start(_child_name(), get_settings().worker_queues)


@worker_init.connect
def _serve_metrics(**_: object) -> None:
    """The pool's parent is the one process that serves the children's merged metrics."""
    port = get_settings().metrics_port
    if port is not None:
        metrics_export.serve(port)


@worker_process_shutdown.connect
def _leave(**_: object) -> None:
    heartbeat.leave()
    metrics_export.process_exited()


def _child_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
