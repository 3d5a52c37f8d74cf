"""Thin tasks: receive ids, call the use case. Results are never stored (the DB is the truth)."""

from __future__ import annotations

import os
import socket

from services.config import get_settings
from services.queue import TRAIN_PACK
from services.training import run_pack
from worker.app import app


@app.task(name=TRAIN_PACK, bind=True, ignore_result=True)
def train_pack(self, job_ids: list[str]) -> None:  # noqa: ANN001 (Celery's bound task)
    """Claims what it can of ``job_ids``; a duplicate delivery claims nothing and returns."""
    hostname = self.request.hostname or socket.gethostname()
    run_pack(list(job_ids), hostname=hostname, pid=os.getpid(), backend=get_settings().engine_backend)
