"""Real Celery worker processes for the service tests (never eager mode: that tests no worker).

One worker per module: ``start_stack`` points this process's settings and a fresh worker at the
same database and broker; the module's fixture yields a ``Stack`` and stops the worker at the end.
Helpers to wait for jobs and to read what a worker wrote live here too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from services import jobs
from services.config import get_settings
from services.db import repository
from services.db.models import Checkpoint, HistoryChunk
from services.db.session import reset_engine, session_scope
from services.examples import statquest_job
from services.spec import FINISHED, JobCreate, JobRead

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    """A worker and a scheduler process, and the environment this test process shares with them."""

    process: subprocess.Popen
    log: Path
    env: dict[str, str]
    scheduler: subprocess.Popen | None = None
    extra: list[subprocess.Popen] = field(default_factory=list)  # started by a test, stopped with the stack

    def log_tail(self, lines: int = 40) -> str:
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        scheduler_log = self.log.with_name("scheduler.log")
        if scheduler_log.exists():
            tail += "\n--- scheduler ---\n" + "\n".join(scheduler_log.read_text(errors="replace").splitlines()[-lines:])
        return tail


def reset_caches() -> None:
    from services import doorbell, jobs, queue

    get_settings.cache_clear()
    reset_engine()
    queue.reset_sender()
    doorbell.forget()
    jobs.forget_datasets()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Module-scoped env vars for this process (``monkeypatch`` is function-scoped)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        reset_caches()
        try:
            yield
        finally:
            reset_caches()


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``celery worker`` on the cpu queue, one prefork child, in its own process group."""
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "cpu", "-c", "1",
               "--pool", "prefork", "--without-heartbeat", "--without-gossip", "--without-mingle",
               "--loglevel", "INFO"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def start_scheduler(env: dict[str, str], log: Path) -> subprocess.Popen:
    """``descent scheduler``, the one publisher of training tasks, in its own process group."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.cli", "scheduler"], cwd=ROOT,
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_worker(process: subprocess.Popen) -> None:
    """Cold shutdown (a test may leave a long task running), then kill what is left of the
    group: a prefork child outlives a main process that a test killed, and would take the next
    run's messages from the shared broker."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextmanager
def running_stack(env: dict[str, str], log: Path) -> Iterator[Stack]:
    with environment(env):
        process = start_worker(env, log)
        scheduler = start_scheduler(env, log.with_name("scheduler.log"))
        stack = Stack(process, log, env, scheduler)
        try:
            yield stack
        finally:
            for other in (scheduler, *stack.extra, stack.process):  # a test may replace the worker
                stop_worker(other)
            stop_worker(process)


def wait_for(job_id: str, stack: Stack, done=lambda job: job.status in FINISHED, timeout: float = 30) -> JobRead:
    """Poll the job row until ``done`` holds; fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get_job(job_id)
        if done(job):
            return job
        assert stack.process.poll() is None, f"worker exited:\n{stack.log_tail()}"
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {jobs.get_job(job_id)} after {timeout}s:\n{stack.log_tail()}")


def seed_job(max_steps: int = 35, checkpoint_every: int = 10, **overrides: object) -> dict:
    """The StatQuest network and data with every parameter trainable from a seeded init."""
    document = statquest_job() | {"name": "seeded", "init": {"seed": 3}, "trainable": None,
                                  "stop": {"max_steps": max_steps}, "checkpoint_every": checkpoint_every}
    return document | overrides


def submit(document: dict) -> JobRead:
    return jobs.submit_job(JobCreate.model_validate(document))


def checkpoint_steps(job_id: str) -> list[int]:
    with session_scope() as session:
        return repository.checkpoint_steps(session, job_id)


def history_rows(job_id: str) -> list[tuple[int, int]]:
    """(first_step, length) of every stored chunk, in order."""
    with session_scope() as session:
        rows = session.execute(select(HistoryChunk.first_step, HistoryChunk.ssr)
                               .where(HistoryChunk.job_id == job_id).order_by(HistoryChunk.first_step))
        return [(first, len(ssr)) for first, ssr in rows]


def assert_contiguous(job_id: str, last_step: int) -> None:
    """Every step 0..last_step recorded exactly once: no gap, no repeat."""
    covered = [step for first, n in history_rows(job_id) for step in range(first, first + n)]
    assert covered == list(range(last_step + 1))


def final_parameters(job_id: str) -> dict[str, np.ndarray]:
    with session_scope() as session:
        found = repository.load_checkpoint_arrays(session, job_id)
    assert found is not None
    return found[1]


def checkpoint_attempts(job_id: str) -> dict[int, int]:
    with session_scope() as session:
        rows = session.execute(select(Checkpoint.step, Checkpoint.attempt).where(Checkpoint.job_id == job_id))
        return dict(rows.all())


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")
