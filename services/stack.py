"""The embedded stack: the production processes on one machine, supervised by ``descent up``.

The API and the workers are started as the same commands production runs (``descent api``,
``descent worker``, i.e. uvicorn and a prefork Celery worker) in subprocesses; only the URLs
differ (SQLite + ``filesystem://`` under ``DESCENT_HOME`` unless the environment names others).
All children share one metrics folder (wiped at start), so the API's ``/metrics`` shows the
events of every process of the stack.
This module imports neither ``api`` nor ``worker``: it starts them by module name.

Each child runs in its own process group so that Ctrl-C reaches only the supervisor, which then
stops the children in order (terminate, wait, kill the whole group after a timeout: a prefork
pool never outlives its parent). Workers answer SIGTERM by checkpointing and releasing their
jobs, which resume at the next start.

Once the stack is up, a child that dies is restarted (``supervise``), after a backoff that
doubles while it keeps dying young: the stack keeps serving, and only a signal to the
supervisor stops it. Before it is up, a child that dies fails the start (a port in use, a bad
URL), so ``descent up`` and ``descent demo`` say why at once instead of looping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from services import metrics_dir
from services.config import Settings, get_settings
from services.keys import KeyRing


class StackError(RuntimeError):
    """A child exited early or the API never became ready."""


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_binding(host: str, settings: Settings) -> None:
    """Without keys anyone who reaches the port could train and read everything: then the stack
    serves this machine only. A bad DESCENT_API_KEYS stops the start here, not in the API."""
    try:
        ring = KeyRing.from_settings(settings)
    except ValueError as exc:
        raise StackError(str(exc)) from None
    if not ring.enabled and host not in LOOPBACK:
        raise StackError(f"auth is off (DESCENT_API_KEYS is empty), so the API serves 127.0.0.1 only; "
                         f"set DESCENT_API_KEYS to listen on {host}")


def auth_note(settings: Settings) -> str:
    """One line for the start banner: whether a key is needed."""
    ring = KeyRing.from_settings(settings)
    if not ring.enabled:
        return "auth off (no DESCENT_API_KEYS): anyone on this machine can use the API"
    tenants = len({tenant for _, tenant in ring.entries})
    return f"auth on: {len(ring.entries)} key(s) for {tenants} tenant(s); send Authorization: Bearer <key>"


RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds, while a child keeps dying young
STABLE_SECONDS = 60.0  # a child that lived this long starts over at the first delay


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: IO[bytes] | None = None
    args: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0  # consecutive early deaths (sets the backoff)
    restart_at: float | None = None  # when a dead child is due to start again


def default_api_workers(cores: int | None = None) -> int:
    """One API process per two cores. On a small machine the API, the scheduler and the workers
    share the cores, and a second API process there costs more CPU than it adds: each process
    group-commits only the submits of its own clients (smaller transactions), and the two
    contend for SQLite's write lock. A burst of 1000 POSTs from 8 clients with 2 workers on 2
    cores (benchmarks/RESULTS.md, eighth session): API CPU 0.55-0.71 s with two, 0.42-0.49 s
    with one, the burst as fast or faster."""
    return max(1, (cores or os.cpu_count() or 2) // 2)


@dataclass
class Stack:
    """Start with ``with Stack(...) as stack:``; leaving the block stops every child."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_workers: int = 1
    log_dir: Path | None = None  # None: children write to this process's terminal
    stop_timeout: float = 10.0
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the children's environment

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0) -> None:
        """Prepare the home, migrate the schema, then start the API and the workers."""
        self.home = self.home.absolute()
        os.environ["DESCENT_HOME"] = str(self.home)
        get_settings.cache_clear()
        settings = get_settings()
        check_binding(self.host, settings)
        self.home.mkdir(parents=True, exist_ok=True)
        if settings.broker_url.startswith("filesystem://"):
            settings.broker_folder.mkdir(parents=True, exist_ok=True)
        from services.db.migrate import upgrade  # lazy: only `up` and `demo` need Alembic

        self.env = os.environ.copy()
        metrics_dir.fresh(self.home / "metrics", self.env)  # one folder: the API serves all

        try:
            upgrade()  # the schema is current before any process serves or trains
        except Exception as exc:  # noqa: BLE001 (driver and Alembic errors alike)
            raise StackError(f"database migration failed: {str(exc).splitlines()[0]}") from exc
        self._spawn("api", ["api", "--host", self.host, "--port", str(self.port),
                            "--workers", str(self.api_workers)])
        self._spawn("scheduler", ["scheduler"])
        for i in range(self.workers):
            self._spawn(f"worker{i}", ["worker", "--queues", "cpu", "--concurrency", "1", "--name", f"cpu{i}@%h"])
        self.wait_ready(ready_timeout)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self.children.append(Child(name, self._popen(args, log), log, args))

    def _popen(self, args: list[str], log: IO[bytes] | None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT if log else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def supervise(self, echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> None:
        """Restart every child that died, once its backoff has passed; call it periodically."""
        now = time.monotonic()
        for child in self.children:
            code = child.proc.poll()
            if code is None:
                if now - child.started >= STABLE_SECONDS:
                    child.restarts = 0
                continue
            if child.restart_at is None:
                _kill_group(child.proc)  # a dead worker's pool children go with it
                delay = RESTART_DELAYS[min(child.restarts, len(RESTART_DELAYS) - 1)]
                child.restart_at = now + delay
                echo(f"{time.strftime('%H:%M:%S')} {child.name} exited with code {code}; "
                     f"restarting in {delay:g} s")
            elif now >= child.restart_at:
                child.proc, child.started, child.restart_at = self._popen(child.args, child.log), now, None
                child.restarts += 1
                echo(f"{time.strftime('%H:%M:%S')} {child.name} restarted (pid {child.proc.pid})")

    def wait_ready(self, timeout: float) -> None:
        wait_until_ready(self.url, timeout, self.check_alive)

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                where = f"; see {child.log.name}" if child.log else ""
                raise StackError(f"{child.name} exited with code {code}{where}")

    def stop(self) -> None:
        """SIGTERM to every child at once, one shared deadline, then SIGKILL each group."""
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in self.children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _kill_group(child.proc)
            if child.log:
                child.log.close()
        self.children.clear()


def wait_until_ready(url: str, timeout: float, check: Callable[[], None] = lambda: None) -> None:
    """Poll ``{url}/readyz`` until 200. ``check`` is called between polls and should raise when a
    watched process has died, so a crashed child fails fast instead of after the timeout."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        check()
        try:
            answer = httpx.get(f"{url}/readyz", timeout=2.0)
            if answer.status_code == 200:
                return
            last = answer.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise StackError(f"API at {url} not ready after {timeout:.0f} s: {last}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left in the child's process group (pool processes included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so ``with Stack`` cleans up as it does for Ctrl-C."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
