"""Thin tasks: receive ids, call the use case. Results are never stored (the DB is the truth)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from services.config import get_settings
from services.queue import TRAIN_PACK
from services.training import run_pack
from worker.app import app

# The scheduler sends a pack to the queue of its jobs' device (``services.queue.publish_pack``),
# whose routing key is the queue's name; each queue has its engine backend.
QUEUE_BACKENDS = {"cpu": "numpy", "gpu": "cupy"}


def backend_for(delivery_info: Mapping[str, Any] | None, default: str) -> str:
    """The backend of the queue a task came from, so a worker of ``cpu,gpu`` trains a cpu pack
    on NumPy and a gpu pack on CuPy (the backend is no longer one per process); ``default`` (the
    worker's ``DESCENT_ENGINE_BACKEND``) when the queue is unknown."""
    queue = (delivery_info or {}).get("routing_key")
    return QUEUE_BACKENDS.get(queue, default) if isinstance(queue, str) else default


@app.task(name=TRAIN_PACK, bind=True, ignore_result=True)
def train_pack(self, job_ids: list[str]) -> None:  # noqa: ANN001 (Celery's bound task)
    """Claims what it can of ``job_ids``; a duplicate delivery claims nothing and returns."""
    hostname = self.request.hostname or socket.gethostname()
    backend = backend_for(self.request.delivery_info, get_settings().engine_backend)
    run_pack(list(job_ids), hostname=hostname, pid=os.getpid(), backend=backend)
