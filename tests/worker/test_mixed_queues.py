"""A worker of both queues (``descent worker --queues cpu,gpu``): a pack trains on the backend
of the queue it came from. The process's backend is CuPy for such a worker, which made every
``"device": "cpu"`` job fail with ``ModuleNotFoundError: cupy`` on a host without CuPy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.examples import STATQUEST_UPDATES, statquest_job
from worker.tasks import backend_for

from .conftest import ROOT, Stack, environment, start_scheduler, stop_worker, submit, wait_for


@pytest.mark.parametrize(("info", "default", "backend"), [
    ({"routing_key": "cpu", "exchange": "cpu"}, "cupy", "numpy"),
    ({"routing_key": "gpu", "exchange": "gpu"}, "numpy", "cupy"),
    ({"routing_key": "other"}, "numpy", "numpy"),
    ({}, "cupy", "cupy"),
    (None, "numpy", "numpy"),
])
def test_the_backend_is_the_queues(info: dict | None, default: str, backend: str) -> None:
    assert backend_for(info, default) == backend


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Stack]:
    from services.db.migrate import upgrade

    env = {"DESCENT_HOME": str(tmp_path), "DESCENT_DATABASE_URL": f"sqlite:///{tmp_path / 'descent.db'}",
           "DESCENT_BROKER_URL": "filesystem://", "DESCENT_SCHEDULER_LEASE_SECONDS": "2"}
    upgrade(env["DESCENT_DATABASE_URL"])
    log = tmp_path / "worker.log"
    with environment(env):
        with log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--queues", "cpu,gpu",
                                       "--concurrency", "1", "--name", "mixed@%h"], cwd=ROOT,
                                      env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        scheduler = start_scheduler(env, tmp_path / "scheduler.log")
        stack = Stack(worker, log, env, scheduler)
        try:
            yield stack
        finally:
            stop_worker(scheduler)
            stop_worker(worker)


@pytest.mark.slow
def test_a_cpu_job_on_a_cpu_and_gpu_worker_trains_on_numpy(mixed: Stack) -> None:
    job = wait_for(submit(statquest_job()).id, mixed, timeout=60)
    assert (job.status, job.error, job.step) == ("succeeded", None, STATQUEST_UPDATES), mixed.log_tail()
