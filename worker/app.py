"""The Celery worker process: the shared configuration plus per-process setup after fork.

Start it with ``descent worker --queues cpu`` (or ``gpu``), which checks that a gpu worker's host
can compute with CuPy and sets ``DESCENT_WORKER_QUEUES``, the queues each child's heartbeat
announces to the scheduler: a bare ``celery -A worker.app worker -Q gpu`` needs that variable (and
``DESCENT_ENGINE_BACKEND=cupy``) set to match, or it is counted as a cpu worker. Each prefork
child builds its own database engine. A task trains on its queue's backend
(``worker.tasks.backend_for``: cpu NumPy, gpu CuPy), whatever the process's setting, so one
worker may serve both queues.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

from billiard.process import active_children
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutting_down

from services import heap, heartbeat, metrics_dir, metrics_export, training
from services.config import get_settings
from services.db.session import WORKER_APPLICATION, reset_engine, set_application_name
from services.queue import make_celery

app = make_celery(get_settings())
app.conf.imports = ("worker.tasks",)
log = logging.getLogger(__name__)
# The pool's parent tells its children to stop training with a real-time signal: billiard
# claims SIGUSR1/SIGUSR2 and the other classic ones in its children, and no terminal sends this.
STOP_SIGNAL = signal.SIGRTMIN + 3


@worker_process_init.connect
def _fresh_engine_per_child(**_: object) -> None:
    """A pool inherited through fork would share sockets with the parent (hangs, corruption).
    Each child then announces itself and renews its jobs' leases from its own thread."""
    set_application_name(f"{WORKER_APPLICATION}:{os.getpid()}")
    reset_engine()
    heartbeat.start(_child_name(), get_settings().worker_queues)
    signal.signal(STOP_SIGNAL, lambda *_: training.request_stop())
    heap.freeze()


@worker_shutting_down.connect
def _stop_training(**_: object) -> None:
    """SIGTERM (or Ctrl-C) to the worker: Celery waits for running tasks, so each child is told
    to checkpoint and release its jobs within seconds; another worker resumes them at once
    instead of after a lease, and no long job holds up a deploy."""
    for child in active_children():
        try:
            os.kill(child.pid, STOP_SIGNAL)
        except (ProcessLookupError, TypeError):
            continue
        log.info("asked pool process %s to checkpoint and release its jobs", child.pid)


@worker_init.connect
def _warm_engine(**_: object) -> None:
    """In the pool's parent, before it forks: every child starts with the engine's kernels loaded."""
    if get_settings().engine_backend == "numpy":
        training.warm_up()


@worker_init.connect
def _serve_metrics(**_: object) -> None:
    """The pool's parent is the one process that serves the children's merged metrics, and
    removes their folder when it stops if ``descent worker`` made it (each start makes one)."""
    metrics_dir.remove_at_exit()
    port = get_settings().metrics_port
    if port is not None:
        metrics_export.serve(port)


@worker_process_shutdown.connect
def _leave(**_: object) -> None:
    heartbeat.leave()
    metrics_export.process_exited()


def _child_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
