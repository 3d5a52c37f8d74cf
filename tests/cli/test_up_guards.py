"""``descent up``'s supervisor: what it refuses before starting (a busy port, a home whose stack
is alive, another server's /readyz), how it stops (SIGHUP and SIGQUIT like SIGTERM; a second
signal while stopping never leaves a child behind) and that no child outlives it, even when it
is SIGKILLed. Real processes; the stacks come from ``tests/e2e``'s fixtures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.stack import StackError, wait_until_ready
from tests.e2e.conftest import ROOT, Running, descent, processes_with_home, stack_env, start_up  # noqa: F401

STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a child that will not stop: only SIGKILL ends it
pool = subprocess.Popen([sys.executable, "-c",
                         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(pool.pid, flush=True)  # in the child's process group, as a worker's pool is
time.sleep(600)
"""

SUPERVISOR = """
import subprocess, sys, time
from pathlib import Path
from services import stack as stacks

stack = stacks.Stack(Path(sys.argv[1]), stop_timeout=float(sys.argv[2]))
for i in range(2):
    proc = subprocess.Popen([sys.executable, "-c", sys.argv[3]], stdout=subprocess.PIPE, start_new_session=True)
    pool = int(proc.stdout.readline())
    stack.children.append(stacks.Child(f"stubborn{i}", proc))
    print(proc.pid, pool, flush=True)
stacks.raise_on_sigterm()
try:  # "ready" inside the try: a signal sent as soon as it is read lands in the handler
    print("ready", flush=True)
    time.sleep(600)
except KeyboardInterrupt:
    stack.stop()
print("stopped", flush=True)
"""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextmanager
def supervisor(tmp_path: Path, stop_timeout: float) -> Iterator[tuple[subprocess.Popen, list[int]]]:
    """A ``Stack`` in its own process, supervising two children that ignore SIGTERM (each with
    a 'pool' process in its group); yields it and every pid it watches."""
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path / "home"), str(stop_timeout), STUBBORN],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    pids: list[int] = []
    try:
        for _ in range(2):
            pids += [int(pid) for pid in proc.stdout.readline().split()]
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        yield proc, pids
    finally:
        kill_all([proc.pid, *pids])
        proc.wait()


@pytest.mark.parametrize("signals", [("SIGTERM", "SIGTERM"), ("SIGINT", "SIGINT"), ("SIGHUP", "SIGQUIT")])
def test_a_second_signal_while_stopping_kills_every_child_at_once(signals: tuple[str, str], tmp_path: Path) -> None:
    """The second signal used to raise KeyboardInterrupt inside the wait: the supervisor exited
    with its children (and their pools) running. Now it ends the wait and SIGKILLs every group."""
    with supervisor(tmp_path, stop_timeout=60) as (proc, pids):
        proc.send_signal(getattr(signal, signals[0]))
        time.sleep(0.5)  # stop() is waiting for children that ignore SIGTERM
        assert proc.poll() is None and all(map(alive, pids))
        proc.send_signal(getattr(signal, signals[1]))
        out, err = proc.communicate(timeout=20)
        assert (proc.returncode, out.strip()) == (0, "stopped"), err
        assert eventually(lambda: not any(map(alive, pids)), 5), [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize("first", ["SIGTERM", "SIGHUP", "SIGQUIT"])
def test_one_stop_signal_kills_what_did_not_stop_after_the_timeout(first: str, tmp_path: Path) -> None:
    """SIGHUP (a closed terminal) and SIGQUIT stop it as SIGTERM does, instead of killing the
    supervisor alone and orphaning its children."""
    with supervisor(tmp_path, stop_timeout=1.0) as (proc, pids):
        started = time.monotonic()
        proc.send_signal(getattr(signal, first))
        out, err = proc.communicate(timeout=20)
        assert (proc.returncode, out.strip()) == (0, "stopped"), err
        assert time.monotonic() - started >= 0.9  # the children had their chance
        assert eventually(lambda: not any(map(alive, pids)), 5), [pid for pid in pids if alive(pid)]


def test_children_get_sigterm_when_their_supervisor_is_sigkilled(tmp_path: Path) -> None:
    """``spawn`` sets PR_SET_PDEATHSIG: a child goes when the supervisor dies, even by SIGKILL;
    the child's own children (a worker's pool) are not touched by it."""
    script = """
import subprocess, sys, time
from services.stack import spawn
child = spawn([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    child = int(proc.stdout.readline())
    try:
        assert alive(child)
        proc.kill()
        proc.wait()
        assert eventually(lambda: not alive(child), 5), "the child outlived its SIGKILLed supervisor"
    finally:
        kill_all([child])


class Impostor(BaseHTTPRequestHandler):
    """Another server on the port that answers /readyz with 200 (e.g. another Descent)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"status": "ready", "checks": {}, "stack": "someone-else"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_the_ready_check_accepts_only_its_own_api() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(StackError, match="another server answers"):
            wait_until_ready(url, 1.0, token="ours")
        wait_until_ready(url, 1.0, token="someone-else")
        wait_until_ready(url, 1.0)  # without a token (tests, other callers): any 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """It used to start, report "serving" (another server answered), and restart its API forever."""
    home = tmp_path / "home"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(descent("up", "--port", str(port)), cwd=ROOT, env=stack_env(home),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "serving" not in result.stdout and not (home / "metrics").exists()
    assert processes_with_home(home) == []


def test_a_second_stack_on_a_live_home_is_refused_and_sighup_stops_the_first(
        start_up: Callable[..., Running]) -> None:  # noqa: F811
    running = start_up()
    marker = running.home / "metrics" / "kept.db"
    marker.write_bytes(b"")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    second = subprocess.run(descent("up", "--port", str(port)), cwd=ROOT, env=stack_env(running.home),
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert second.stderr.startswith(f"error: another `descent up` is running on home {running.home} "
                                    f"(pid {running.proc.pid}, {running.url})")
    assert marker.exists(), "the live stack's metrics folder was wiped"
    strays = [pid for pid in processes_with_home(running.home) if not descends_from(pid, running.proc.pid)]
    assert strays == [], "a second scheduler or worker started"

    running.proc.send_signal(signal.SIGHUP)  # the terminal went away
    assert running.proc.wait(timeout=30) == 0, running.log.read_text()[-3000:]
    assert "stopped" in running.log.read_text()
    assert eventually(lambda: processes_with_home(running.home) == [], 5), processes_with_home(running.home)


def test_no_child_outlives_a_sigkilled_supervisor(start_up: Callable[..., Running]) -> None:  # noqa: F811
    """PR_SET_PDEATHSIG: the API, the scheduler and the worker (its pool with it) all go, and the
    port is free for the next start."""
    running = start_up()
    assert len(processes_with_home(running.home)) >= 4  # supervisor, API, scheduler, worker (+ pool)
    running.proc.kill()
    running.proc.wait()
    gone = eventually(lambda: processes_with_home(running.home) == [], 30)
    assert gone, f"orphans: {processes_with_home(running.home)}"
    port = int(running.url.rsplit(":", 1)[1])
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_an_interrupted_demo_says_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``exc or 'interrupted'`` was always the (empty) KeyboardInterrupt: "error: ; logs in"."""
    from services import cli

    class Interrupted:
        def __init__(self, *_: object, **__: object) -> None:
            pass

        def __enter__(self) -> None:
            raise KeyboardInterrupt

        def __exit__(self, *_: object) -> None:
            pass

    monkeypatch.setattr("services.stack.Stack", Interrupted)
    monkeypatch.setattr("services.stack.raise_on_sigterm", lambda: None)
    result = CliRunner().invoke(cli.app, ["demo", "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == f"error: interrupted; logs in {tmp_path / 'logs'}"
