"""End-to-end fixtures: ``descent up`` / ``descent demo`` as real subprocesses, never orphaned.

Every process the stack starts inherits ``DESCENT_HOME`` (a fresh tmp folder), so after a test
the processes still carrying that home in their environment are exactly our leftovers: the
teardown kills them by pid and the tests assert there were none.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.stack import StackError, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("DESCENT_TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/12")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descent(*args: str) -> list[str]:
    """The installed entry point's module, run with this interpreter."""
    return [sys.executable, "-m", "services.cli", *args]


def stack_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}
    return env | {"DESCENT_HOME": str(home), "PYTHONUNBUFFERED": "1"} | extra


def processes_with_home(home: Path) -> list[int]:
    """Pids whose environment says DESCENT_HOME=<home> (only processes this test started)."""
    marker = f"DESCENT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_leftovers(home: Path) -> list[int]:
    left = processes_with_home(home)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@dataclass
class Running:
    url: str
    home: Path
    proc: subprocess.Popen
    log: Path

    def stop(self, timeout: float = 30.0) -> None:
        """What Ctrl-C does; the stack must be gone afterwards, children included."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 5
        while processes_with_home(self.home) and time.monotonic() < deadline:
            time.sleep(0.1)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    def alive() -> None:
        if proc.poll() is not None:
            pytest.fail(f"descent up exited with {proc.returncode}:\n{log.read_text()[-4000:]}")

    try:
        wait_until_ready(url, timeout, alive)
    except StackError as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")


@contextmanager
def descent_up(folder: Path, *flags: str, **env: str) -> Iterator[Running]:
    """``descent up --workers 1 [flags]`` on a free port, home and log in ``folder``, ready;
    stopped like Ctrl-C at the end, leftovers killed."""
    home, port, log = folder / "home", free_port(), folder / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            descent("up", "--port", str(port), "--workers", "1", *flags), cwd=ROOT, env=stack_env(home, **env),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    running = Running(f"http://127.0.0.1:{port}", home, proc, log)
    try:
        wait_ready(running.url, proc, log)
        yield running
    finally:
        running.stop()
        kill_leftovers(home)


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """``start_up(**env)``: ``descent up --workers 1`` on a free port with its home in tmp_path."""
    started: list[Running] = []

    def start(**extra: str) -> Running:
        home, port = tmp_path / f"home{len(started)}", free_port()
        log = tmp_path / f"up{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                descent("up", "--port", str(port), "--workers", "1"), cwd=ROOT, env=stack_env(home, **extra),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        started.append(Running(f"http://127.0.0.1:{port}", home, proc, log))
        wait_ready(started[-1].url, proc, log)
        # The API answering is not enough: until `descent up` has seen it ready too (its banner),
        # a child that dies ends the start instead of being restarted.
        deadline = time.monotonic() + 30
        while b"Descent is serving at" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        return started[-1]

    yield start
    for running in started:
        running.stop()
        kill_leftovers(running.home)
