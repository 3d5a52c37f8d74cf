"""A worker of both queues (``descent worker --queues cpu,gpu``): a pack trains on the backend
of the queue it came from. The process's backend is CuPy for such a worker, which made every
``"device": "cpu"`` job fail with ``ModuleNotFoundError: cupy`` on a host without CuPy.

A gpu worker starts only where CuPy computes (``descent worker``'s check), so the worker here
imports ``FAKE_CUPY``: it passes that check and fails anything else, as a cpu pack trained on
CuPy would."""

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


FAKE_CUPY = '''"""Only what `descent worker`'s GPU check uses; any other name fails."""
from types import SimpleNamespace

import numpy

cuda = SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=lambda: 1))
arange, ones = numpy.arange, numpy.ones


def __getattr__(name):
    raise AttributeError(f"the test's stand-in CuPy has no {name!r}: a cpu pack must not use CuPy")
'''


def fake_cupy(folder: Path) -> str:
    """A folder to put on PYTHONPATH whose ``cupy`` is FAKE_CUPY."""
    (folder / "cupy").mkdir(parents=True)
    (folder / "cupy" / "__init__.py").write_text(FAKE_CUPY)
    return str(folder)


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[Stack]:
    from services.db.migrate import upgrade

    env = {"DESCENT_HOME": str(tmp_path), "DESCENT_DATABASE_URL": f"sqlite:///{tmp_path / 'descent.db'}",
           "DESCENT_BROKER_URL": "filesystem://", "DESCENT_SCHEDULER_LEASE_SECONDS": "2"}
    cupy = {"PYTHONPATH": os.pathsep.join([fake_cupy(tmp_path / "site"), str(ROOT)])}
    upgrade(env["DESCENT_DATABASE_URL"])
    log = tmp_path / "worker.log"
    with environment(env):
        with log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--queues", "cpu,gpu",
                                       "--concurrency", "1", "--name", "mixed@%h"], cwd=ROOT,
                                      env={**os.environ, **env, **cupy}, stdout=out, stderr=subprocess.STDOUT,
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
