"""The StatQuest job through ``descent up`` (real API and Celery worker processes), on the
embedded stack (SQLite + filesystem broker) and on Redis + PostgreSQL, and ``descent demo``."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.examples import (
    STATQUEST_B3, STATQUEST_SSR0, STATQUEST_UPDATES, STATQUEST_WEIGHTS, statquest_job, statquest_named,
)
from services.spec import FINISHED
from tests.e2e.conftest import REDIS_URL, ROOT, Running, descent, free_port, kill_leftovers, processes_with_home, stack_env

pytestmark = pytest.mark.slow


def train_statquest(running: Running, timeout: float = 60.0) -> tuple[dict, dict, dict[str, float]]:
    """Submit over HTTP, wait for the end; the job, its history and its named parameters."""
    with httpx.Client(base_url=running.url, timeout=10) as client:
        answer = client.post("/v1/jobs", json=statquest_job())
        assert answer.status_code == 201, answer.text
        deadline = time.monotonic() + timeout
        while (job := client.get(f"/v1/jobs/{answer.json()['id']}").json())["status"] not in FINISHED:
            assert time.monotonic() < deadline, f"job still {job['status']}:\n{running.log.read_text()[-3000:]}"
            time.sleep(0.1)
        history = client.get(f"/v1/jobs/{job['id']}/history").json()
        parameters = client.get(f"/v1/jobs/{job['id']}/parameters").json()
    return job, history, statquest_named(parameters["layers"])


def assert_statquest(running: Running, job: dict, history: dict, named: dict[str, float]) -> None:
    assert (job["status"], job["stop_reason"], job["step"]) == ("succeeded", "min_step_size", STATQUEST_UPDATES)
    assert round(named["b3"], 2) == STATQUEST_B3
    assert {k: named[k] for k in STATQUEST_WEIGHTS} == STATQUEST_WEIGHTS
    assert history["steps"] == list(range(job["step"] + 1))
    assert round(history["ssr"][0], 2) == STATQUEST_SSR0
    assert all(math.isfinite(s) for s in history["ssr"]) and history["ssr"] == sorted(history["ssr"], reverse=True)
    pid = job["worker"]["pid"]
    assert pid in processes_with_home(running.home), "the worker pid is not a live process of this stack"
    assert b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes(), "the job ran outside a Celery worker"


def test_statquest_on_the_embedded_stack(start_up: Callable[..., Running]) -> None:
    running = start_up(DESCENT_MAX_BODY_BYTES="65536")
    assert_statquest(running, *train_statquest(running))
    # The job trained, so the worker announced itself: `descent up` says when (a first start
    # compiles numba's kernels for ~30 s while the API already answers).
    deadline = time.monotonic() + 10
    while b"workers ready: 1 of 1, " not in running.log.read_bytes():
        assert time.monotonic() < deadline, running.log.read_text()[-3000:]
        time.sleep(0.1)
    chunks = (b"x" * 4096 for _ in range(20))  # chunked: no Content-Length to trust
    answer = httpx.post(f"{running.url}/v1/datasets", content=chunks, headers={"content-type": "text/csv"})
    assert answer.status_code == 413 and "65536" in answer.json()["detail"]
    running.stop()
    assert running.proc.returncode == 0
    assert processes_with_home(running.home) == [], "descent up left processes behind"


@pytest.fixture
def redis_db() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield REDIS_URL
    client.flushdb()


def test_statquest_over_redis_and_postgres(start_up: Callable[..., Running], pg_url: str, redis_db: str) -> None:
    running = start_up(DESCENT_DATABASE_URL=pg_url, DESCENT_BROKER_URL=redis_db)
    assert_statquest(running, *train_statquest(running))
    running.stop()
    assert processes_with_home(running.home) == []


def test_demo_prints_the_ssr_path_and_b3(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    try:
        done = subprocess.run(
            descent("demo", "--port", str(free_port()), "--home", str(home)), cwd=ROOT,
            env=stack_env(home), capture_output=True, text=True, timeout=180,
        )
    finally:
        assert kill_leftovers(home) == [], "descent demo left processes behind"
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SSR path" in done.stdout and "20.42" in done.stdout
    assert "b3 = 2.61" in done.stdout and "w4 = -2.30" in done.stdout


def stack_processes(running: Running, marker: bytes) -> list[int]:
    """Pids of the stack whose command line holds ``marker`` (b"celery", b"cli api", ...)."""
    found = []
    for pid in processes_with_home(running.home):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                found.append(pid)
        except OSError:
            continue
    return found


def test_descent_up_restarts_a_child_that_dies(start_up: Callable[..., Running]) -> None:
    """SIGKILL the worker (its pool with it) and the API: the supervisor restarts both, the stack
    serves again and trains a job; only a signal to `descent up` stops it, leaving nothing."""
    running = start_up()
    for marker in (b"-m celery", b"services.cli api"):
        pids = stack_processes(running, marker)
        assert pids, marker
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while running.log.read_text().count("restarted (pid") < 2:  # orphaned API processes die first
        assert time.monotonic() < deadline, running.log.read_text()[-3000:]
        time.sleep(0.2)
    while True:
        try:
            if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, running.log.read_text()[-3000:]
        time.sleep(0.2)
    job, _, named = train_statquest(running)
    assert job["status"] == "succeeded" and round(named["b3"], 2) == STATQUEST_B3
    assert "restarting in" in running.log.read_text()
    assert running.proc.poll() is None, "descent up exited when a child died"
    running.stop()
    assert running.proc.returncode == 0
    assert processes_with_home(running.home) == []
