"""The processes of a chaos case and the faults done to them.

A ``ChaosStack`` is the production processes (Celery workers, schedulers, API servers) started
as the worker tests start them (``tests/worker/conftest.py``), each in its own process group, all
carrying the case's own ``DESCENT_HOME`` so that whatever survives a failure is found and killed
(``tests/e2e/conftest.kill_leftovers``). This test process shares their settings, so it submits
and reads jobs through the use cases, as a client of the database would.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import httpx
from sqlalchemy import func, select, text
from tenacity import RetryError, Retrying, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

from services import jobs
from services.db.models import Job, Worker
from services.db.scheduling import db_now
from services.db.session import WORKER_APPLICATION, session_scope
from services.errors import StorageError
from services.examples import statquest_job
from services.spec import FINISHED, JobRead
from tests.e2e.conftest import free_port, kill_leftovers
from tests.worker.conftest import ROOT, parent_pid, start_scheduler, start_worker


def children(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` (a worker's pool, a supervisor's processes) and their
    command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
    return found

T = TypeVar("T")

# Short leases so a lost worker costs seconds (docs/design.md, "Leases and timeouts").
# Commits of fast chunks every 0.1 s instead of 1 s: a case that waits for a job's progress
# before it strikes sees some within its ~1 s of training, and every fault still lands between
# (or inside) commits of several chunks each.
FAST = {"DESCENT_LEASE_SECONDS": "5", "DESCENT_HEARTBEAT_SECONDS": "0.5", "DESCENT_REDISPATCH_SECONDS": "2",
        "DESCENT_SCHEDULER_LEASE_SECONDS": "2", "DESCENT_ENGINE_BACKEND": "numpy",
        "DESCENT_CHECKPOINT_COMMIT_SECONDS": "0.1"}


# Updates of a job that a case hits mid-run: about 2 s of training and checkpoints on one worker
# here (the engine takes a StatQuest update in ~2 us; 30,000 once took 3 s, then 0.2 s).
LONG = 300_000


def chaos_job(steps: int, seed: int = 0, learning_rate: float = 0.1, every: int = 1000, name: str = "chaos") -> dict:
    """The StatQuest network with every parameter trainable from a seeded init, for exactly
    ``steps`` updates (no early stop); ``LONG`` is long enough to be hit mid-run."""
    return statquest_job() | {
        "name": name, "trainable": None, "init": {"seed": seed}, "learning_rate": learning_rate,
        "stop": {"max_steps": steps, "min_step_size": 0}, "checkpoint_every": every,
    }


def eventually(check: Callable[[], T], timeout: float, what: str, stack: "ChaosStack | None" = None,
               every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy (a storage error counts as not yet: the
    database may be the thing we broke); fail naming ``what``, with the processes' logs."""
    try:
        for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(every),
                                retry=retry_if_result(lambda found: not found) | retry_if_exception_type(StorageError)):
            with attempt:
                found = check()
            if not attempt.retry_state.outcome.failed and found:
                return found
    except RetryError:
        pass
    raise AssertionError(f"not within {timeout:g} s: {what}" + (f"\n{stack.log_tail()}" if stack else ""))


def finished(job_ids: list[str]) -> Callable[[], list[JobRead] | None]:
    def check() -> list[JobRead] | None:
        found = [jobs.get_job(job_id) for job_id in job_ids]
        return found if all(job.status in FINISHED for job in found) else None
    return check


def progressed(before: dict[str, int]) -> Callable[[], bool]:
    """Every job wrote a checkpoint past the step it had (or finished): it trains again."""
    def check() -> bool:
        return all((job := jobs.get_job(job_id)).status in FINISHED or job.step > step
                   for job_id, step in before.items())
    return check


@dataclass
class ChaosStack:
    """Workers, schedulers and API servers of one case; ``close`` kills every one of them."""

    kind: str  # "embedded" (SQLite + filesystem broker) or "production" (PostgreSQL + Redis)
    env: dict[str, str]
    folder: Path
    workers: list[subprocess.Popen] = field(default_factory=list)
    schedulers: list[subprocess.Popen] = field(default_factory=list)
    apis: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)
    faulted: set[int] = field(default_factory=set)  # processes a case killed or stopped on purpose

    @property
    def home(self) -> Path:
        return Path(self.env["DESCENT_HOME"])

    @property
    def lease(self) -> float:
        return float(self.env["DESCENT_LEASE_SECONDS"])

    def add_worker(self, **extra: str) -> subprocess.Popen:
        """A worker (one pool child); on PostgreSQL its child's sessions carry the application
        name ``descent-worker:<child pid>``, so a case can see the transactions it holds open."""
        name = f"worker{len(self.workers)}"
        env = self.env | extra
        proc = start_worker(env, self.folder / f"{name}.log")
        self.workers.append(proc)
        self.logs[proc.pid] = self.folder / f"{name}.log"
        return proc

    def add_scheduler(self) -> subprocess.Popen:
        log = self.folder / f"scheduler{len(self.schedulers)}.log"
        proc = start_scheduler(self.env, log)
        self.schedulers.append(proc)
        self.logs[proc.pid] = log
        return proc

    def add_api(self, port: int | None = None) -> tuple[subprocess.Popen, str]:
        """``descent api`` (uvicorn, one process) on a free port, ready to answer."""
        port = port or free_port()
        log = self.folder / f"api{len(self.apis)}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "services.cli", "api", "--port", str(port)], cwd=ROOT,
                                    env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.apis.append(proc)
        self.logs[proc.pid] = log
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, f"the API exited:\n{self.log_tail()}"
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        eventually(ready, 30, "the API answers /healthz", self)
        return proc, url

    def wait_workers(self, n: int, timeout: float = 30) -> None:
        """``n`` worker processes announced themselves (their pool child is up and beating)."""
        def live() -> bool:
            self.assert_alive()
            with session_scope() as session:
                since = db_now(session) - timedelta(seconds=self.lease)
                return session.scalar(select(func.count()).select_from(Worker).where(Worker.seen_at >= since)) >= n
        eventually(live, timeout, f"{n} live worker(s)", self)

    def trainer(self, job: JobRead) -> subprocess.Popen:
        """The worker whose pool child trains ``job``."""
        parent = parent_pid(job.worker.pid)
        for proc in self.workers:
            if proc.pid == parent:
                return proc
        raise AssertionError(f"job {job.id} runs in pid {job.worker.pid}, not a child of our workers")

    def running(self, job_id: str, min_step: int = 0, timeout: float = 30) -> JobRead:
        def check() -> JobRead | None:
            self.assert_alive()
            job = jobs.get_job(job_id)
            return job if job.status == "running" and job.step >= min_step else None
        return eventually(check, timeout, f"job {job_id} running at step >= {min_step}", self)

    def finish(self, job_ids: list[str], timeout: float = 90) -> list[JobRead]:
        def check() -> list[JobRead] | None:
            self.assert_alive()
            return finished(job_ids)()
        return eventually(check, timeout, f"jobs {job_ids} finished", self)

    def assert_alive(self) -> None:
        """Every process the case did not fault is still running."""
        dead = [(p.pid, p.returncode) for p in [*self.workers, *self.schedulers, *self.apis]
                if p.pid not in self.faulted and p.poll() is not None]
        assert not dead, f"processes exited (pid, code): {dead}\n{self.log_tail()}"

    def sessions(self) -> str:
        """PostgreSQL's view of our sessions (state, what they wait for, their last statement)."""
        if self.kind != "production":
            return ""
        query = text("SELECT pid, application_name, state, wait_event_type, wait_event, "
                     "now() - xact_start AS in_xact, left(query, 120) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY application_name")
        try:
            with session_scope() as session:
                return "\n".join(" | ".join(map(str, row)) for row in session.execute(query))
        except StorageError as exc:
            return f"(cannot read pg_stat_activity: {exc})"

    def log_tail(self, lines: int = 25) -> str:
        parts = [f"--- pg_stat_activity ---\n{self.sessions()}"] if self.kind == "production" else []
        for pid, log in self.logs.items():
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log.name} (pid {pid}) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def write_transaction(self, worker: subprocess.Popen) -> str | None:
        """What write transaction the (stopped) ``worker`` holds open, if any. PostgreSQL: the
        state of its session that holds row locks on ``jobs`` (a checkpoint or a lease renewal):
        ``active`` while a statement is in flight (a pipelined executemany the worker stopped
        sending), ``idle in transaction`` between statements. SQLite: ``locked`` while someone
        holds the database's write lock longer than a short wait (the others' transactions take
        milliseconds, so it is the stopped worker)."""
        if self.kind == "production":
            names = [f"{WORKER_APPLICATION}:{pid}" for pid in children(worker.pid)]
            query = text("SELECT a.state FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                         "WHERE a.application_name = ANY(:names) AND a.datname = current_database() "
                         "AND l.relation = 'jobs'::regclass AND l.mode = 'RowExclusiveLock' AND l.granted")
            with session_scope() as session:
                return session.scalar(query, {"names": names})
        path = self.env["DESCENT_DATABASE_URL"].removeprefix("sqlite:///")
        conn = sqlite3.connect(path, timeout=0.3, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return None
        except sqlite3.OperationalError:
            return "locked"
        finally:
            conn.close()

    def stop_worker(self, worker: subprocess.Popen, landed: Callable[[str | None], bool], tries: int = 200) -> str:
        """SIGSTOP the worker's process group at a moment ``landed`` accepts (given what
        ``write_transaction`` says); returns that and how many stops it took. Chance decides
        where a stop lands, so this stops, looks, continues and tries again until it is right."""
        self.faulted.add(worker.pid)
        for attempt in range(1, tries + 1):
            self.signal_group(worker, signal.SIGSTOP)
            time.sleep(0.15)  # a statement the server was running finishes: its locks show
            found = self.write_transaction(worker)
            if landed(found):
                return f"{found or 'no write transaction'} (stop {attempt})"
            self.signal_group(worker, signal.SIGCONT)
            time.sleep(random.uniform(0.0, 0.25))
        raise AssertionError(f"no stop of {worker.pid} landed where wanted in {tries} tries")

    def signal_group(self, proc: subprocess.Popen, sig: int) -> None:
        """``sig`` to the process group ``proc`` leads (a worker: its parent and pool child)."""
        self.faulted.add(proc.pid)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Every process we started, at once: continue the stopped ones, kill every group, then
        whatever still carries our home (a pool child that left its group, say)."""
        everything = [*self.apis, *self.schedulers, *self.workers]
        for proc in everything:
            self.signal_group(proc, signal.SIGCONT)
            self.signal_group(proc, signal.SIGKILL)
        for proc in everything:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        kill_leftovers(self.home)


def wait_exit(proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until ``proc`` exited; fails after ``timeout``."""
    started = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"pid {proc.pid} still running after {timeout:g} s") from exc
    return time.monotonic() - started


def jobs_named(prefix: str) -> dict[str, int]:
    """How many job rows carry each name starting with ``prefix``."""
    with session_scope() as session:
        rows = session.execute(select(Job.name, func.count()).where(Job.name.like(f"{prefix}%")).group_by(Job.name))
        return dict(rows.all())


def lost_leases(job_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(Job.lost_leases).where(Job.id == job_id))
