"""``descent worker --queues gpu`` on a host that cannot compute with CuPy exits at once with one
line, and is never seen as a live gpu worker. It used to start, announce itself (so the scheduler
sent it packs and the no-worker alert stayed quiet) and fail every gpu job with
``ModuleNotFoundError: No module named 'cupy'``. Unknown queue names are refused too (a worker of
queue ``gpus`` consumed nothing, forever)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.db.models import Worker
from services.db.session import session_scope

from .conftest import ROOT, environment

NO_DEVICE_CUPY = '''
class _Runtime:
    @staticmethod
    def getDeviceCount():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")


class cuda:
    runtime = _Runtime
'''


def _worker(queues: str, tmp_path: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """The worker command as compose runs it, on a SQLite file; a worker that starts is a failure."""
    from services.db.migrate import upgrade

    env = {"DESCENT_HOME": str(tmp_path), "DESCENT_DATABASE_URL": f"sqlite:///{tmp_path / 'descent.db'}",
           "DESCENT_BROKER_URL": "filesystem://"}
    upgrade(env["DESCENT_DATABASE_URL"])
    extra = {"PYTHONPATH": os.pathsep.join([pythonpath, str(ROOT)])} if pythonpath else {}
    try:
        done = subprocess.run([sys.executable, "-m", "services.cli", "worker", "--queues", queues,
                               "--concurrency", "1"], cwd=ROOT, env={**os.environ, **env, **extra},
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a worker of --queues {queues} started here instead of refusing")
    with environment(env), session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Worker)) == 0, "it announced itself as a worker"
    return done


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
@pytest.mark.parametrize("queues", ["gpu", "cpu,gpu"])
def test_a_gpu_worker_without_cupy_exits_with_one_line(queues: str, tmp_path: Path) -> None:
    done = _worker(queues, tmp_path)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "No module named 'cupy'" in line and "pip install '.[gpu]'" in line and "--queues cpu" in line


def test_a_gpu_worker_without_a_device_exits_with_one_line(tmp_path: Path) -> None:
    """CuPy installed, no GPU (or no driver): the CUDA error is the reason given."""
    site = tmp_path / "site"
    (site / "cupy").mkdir(parents=True)
    (site / "cupy" / "__init__.py").write_text(NO_DEVICE_CUPY)
    done = _worker("gpu", tmp_path, str(site))
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "cudaErrorNoDevice" in line


@pytest.mark.parametrize("queues", ["gpus", "cpu,GPU", "cpu,"])
def test_an_unknown_queue_is_refused(queues: str, tmp_path: Path) -> None:
    done = _worker(queues, tmp_path)
    assert done.returncode == 2 and "unknown queue" in done.stderr and "cpu, gpu" in done.stderr, done.stderr
