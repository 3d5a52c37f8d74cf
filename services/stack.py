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
jobs, which resume at the next start. SIGHUP and SIGQUIT stop it as SIGTERM does; a further
signal while it stops cuts the wait short (every group is killed at once), never the cleanup.
On Linux every child also gets SIGTERM from the kernel when the supervisor dies (even by
SIGKILL: ``PR_SET_PDEATHSIG``), so no child outlives it holding the port or the home.

One stack per home: the supervisor holds a lock on ``<home>/up.lock`` (``flock``, released by
the kernel when it dies), so a second ``descent up`` on a live home refuses to start instead of
wiping the live stack's metrics and running a second scheduler and worker. It also refuses a
port that is already in use, before it starts anything, and its ready check accepts only its
own API (``/readyz`` echoes a random token given to this stack's children), never another
server answering on that port.

Once the stack is up, a child that dies is restarted (``supervise``), after a backoff that
doubles while it keeps dying young: the stack keeps serving, and only a signal to the
supervisor stops it. Before it is up, a child that dies fails the start (a port in use, a bad
URL), so ``descent up`` and ``descent demo`` say why at once instead of looping.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx

from services import metrics_dir
from services.config import Settings, get_settings
from services.keys import KeyRing


class StackError(RuntimeError):
    """A child exited early or the API never became ready."""


LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "DESCENT_STACK_TOKEN"  # /readyz echoes it: the ready check knows its own API
LOCK_NAME = "up.lock"  # in the home: held (flock) by the live stack's supervisor
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


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


def check_port_free(host: str, port: int) -> None:
    """Bind (and release) host:port as uvicorn will (``SO_REUSEADDR``, IPv6 for a host with a
    colon): a port another server listens on is refused before anything starts. Otherwise the
    API would die at once and be restarted forever while another server answers there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StackError(f"cannot listen on {host}:{port}: {reason} (another `descent up` or server "
                         f"there?); choose another --port") from None


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
    token: str = field(default_factory=lambda: secrets.token_hex(16))  # our API's answer in /readyz
    _lock: IO[str] | None = field(default=None, repr=False)
    _since: datetime | None = field(default=None, repr=False)  # the database's time at the start

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
        """Prepare the home, migrate the schema, then start the API and the workers. Refuses
        (``StackError``, nothing started or wiped) a home whose stack is alive and a busy port."""
        self.home = self.home.absolute()
        os.environ["DESCENT_HOME"] = str(self.home)
        get_settings.cache_clear()
        settings = get_settings()
        check_binding(self.host, settings)
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock_home()
        check_port_free(self.host, self.port)
        if settings.broker_url.startswith("filesystem://"):
            settings.broker_folder.mkdir(parents=True, exist_ok=True)
        from services.db.migrate import upgrade  # lazy: only `up` and `demo` need Alembic

        self.env = os.environ.copy()
        self.env[TOKEN_ENV] = self.token
        metrics_dir.fresh(self.home / "metrics", self.env)  # one folder: the API serves all

        try:
            upgrade()  # the schema is current before any process serves or trains
        except Exception as exc:  # noqa: BLE001 (driver and Alembic errors alike)
            raise StackError(f"database migration failed: {str(exc).splitlines()[0]}") from exc
        self.live_workers()  # notes the database's time: workers count from here
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

    def _lock_home(self) -> None:
        """Hold ``<home>/up.lock`` while this stack lives (the kernel drops it when we die)."""
        path = self.home / LOCK_NAME
        handle = open(path, "a+")  # noqa: SIM115 (held until stop); never inherited by children
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise StackError(f"another `descent up` is running on home {self.home}"
                             f"{f' ({holder})' if holder else ''}; stop it first, or set DESCENT_HOME "
                             f"to another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, {self.url}\n")
        handle.flush()
        self._lock = handle

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock; the file stays (unlinking it would race)
            self._lock = None

    def _popen(self, args: list[str], log: IO[bytes] | None) -> subprocess.Popen:
        return spawn([sys.executable, "-m", "services.cli", *args],
                     env=self.env, stdout=log, stderr=subprocess.STDOUT if log else None)

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
        wait_until_ready(self.url, timeout, self.check_alive, token=self.token)

    def live_workers(self) -> int:
        """Worker processes of the cpu queue that announced themselves since this stack started
        (0 if it cannot tell). The API is ready long before them on a first start (each compiles
        numba's kernels, about 30 s on two cores), while submitted jobs wait with no word of why;
        the rows of a previous run's workers stay live for a lease and must not count."""
        from services.db import scheduling
        from services.db.session import session_scope

        try:
            with session_scope() as session:
                now = scheduling.db_now(session)
                self._since = self._since or now
                window = min(get_settings().lease_seconds, (now - self._since).total_seconds())
                return scheduling.live_workers(session, now, window).get("cpu", 0)
        except Exception:  # noqa: BLE001 (a word on the terminal, never the end of the stack)
            return 0

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                where = f"; see {child.log.name}" if child.log else ""
                raise StackError(f"{child.name} exited with code {code}{where}")

    def stop(self) -> None:
        """SIGTERM to every child at once, one shared deadline, then SIGKILL each group. Another
        Ctrl-C or stop signal meanwhile ends the wait at once: every group is SIGKILLed and
        waited for all the same, so no child is ever left behind."""
        hurry = threading.Event()
        try:
            with _signals_caught(lambda *_: hurry.set()):
                deadline = time.monotonic() + self.stop_timeout
                for child in self.children:
                    if child.proc.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            child.proc.terminate()
                while (not hurry.is_set() and time.monotonic() < deadline
                       and any(child.proc.poll() is None for child in self.children)):
                    time.sleep(0.05)
                for child in self.children:
                    if child.restart_at is None:  # a dead child awaiting restart was killed already
                        _kill_group(child.proc)
                    if child.log:
                        child.log.close()
                self.children.clear()
        finally:
            self._unlock()


def spawn(argv: list[str], **popen: Any) -> subprocess.Popen:
    """A supervised child: in its own session (Ctrl-C at the terminal reaches only the
    supervisor) and, on Linux, sent SIGTERM by the kernel when the supervisor dies. Called from
    a thread other than the main one, the death signal is not set: the kernel sends it when the
    spawning *thread* exits."""
    preexec = _die_with_parent() if threading.current_thread() is threading.main_thread() else None
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec, **popen)


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """``preexec_fn`` setting ``PR_SET_PDEATHSIG`` to SIGTERM (Linux; None elsewhere). SIGTERM,
    not SIGKILL: a worker still checkpoints and releases its jobs, uvicorn still closes its port.
    The setting survives the child's ``exec`` and is cleared in its own forks (a worker's pool)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: no dlopen after fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the setting took effect
            os._exit(1)

    return preexec


@contextlib.contextmanager
def _signals_caught(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Route the stop signals to ``handler`` for the block (main thread only, where Python
    delivers signals), then restore the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)  # None: not set from Python


def wait_until_ready(url: str, timeout: float, check: Callable[[], None] = lambda: None,
                     token: str | None = None) -> None:
    """Poll ``{url}/readyz`` until 200. ``check`` is called between polls and should raise when a
    watched process has died, so a crashed child fails fast instead of after the timeout. With a
    ``token``, only an answer that echoes it counts (``"stack"``): another server on the port is
    not our API being ready."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        check()
        try:
            answer = httpx.get(f"{url}/readyz", timeout=2.0)
            if answer.status_code == 200 and (token is None or _echoed(answer) == token):
                return
            last = answer.text if answer.status_code != 200 else f"another server answers at {url}"
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


def _echoed(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        return None
    return body.get("stack") if isinstance(body, dict) else None


def raise_on_sigterm() -> None:
    """Turn SIGTERM, SIGHUP (the terminal closed) and SIGQUIT into KeyboardInterrupt, so ``with
    Stack`` cleans up as it does for Ctrl-C instead of dying and orphaning its children."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS[1:]:
        signal.signal(signum, handler)
