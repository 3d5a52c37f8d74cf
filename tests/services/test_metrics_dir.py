"""The metric files' folder a process makes for itself is removed when that process exits, and
not when a child forked from it does (a prefork pool's children share the folder)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

SCRIPT = """
import os, sys
from pathlib import Path
from services.metrics_dir import ensure
path = ensure({})
print(path, flush=True)
child = os.fork()
if child == 0:
    sys.exit(0)  # a normal exit runs the atexit hooks it inherited
os.waitpid(child, 0)
print(Path(path).is_dir(), flush=True)
"""


def test_the_creator_removes_its_folder_at_exit_and_a_forked_child_does_not() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    path, after_child = done.stdout.split()
    assert Path(path).name.startswith("descent-metrics-")
    assert after_child == "True", "a forked child's exit removed the shared folder"
    assert not Path(path).exists(), "the creator left its folder behind"


def test_a_stopped_worker_removes_the_folder_descent_worker_made(sqlite_url: str, tmp_path: Path) -> None:
    """``descent worker`` makes the folder, then execs Celery (which drops its exit hook): the
    Celery parent removes it when a SIGTERM stops it, as every other command's folder goes."""
    log = tmp_path / "worker.log"

    def folder(proc: subprocess.Popen) -> Path | None:
        if b" ready." not in log.read_bytes():
            return None
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{proc.pid}/environ").read_text().split("\0") if "=" in item)
        return Path(environ["PROMETHEUS_MULTIPROC_DIR"])

    left = _stopped_by_sigterm(["worker", "--concurrency", "1"], _env(sqlite_url, tmp_path), log, folder)
    assert not left.exists(), "the worker left its metrics folder behind"


def test_a_single_process_api_stopped_by_sigterm_removes_its_folder(sqlite_url: str, tmp_path: Path) -> None:
    """uvicorn stops gracefully on SIGTERM and then raises the signal again: under the default
    handler the process died by it, before its exit hooks ran, and left its folder behind."""
    from tests.e2e.conftest import free_port

    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()

    def folder(_: subprocess.Popen) -> Path | None:
        return next(temp.glob("descent-metrics-*")) if _answers(f"http://127.0.0.1:{port}/healthz") else None

    left = _stopped_by_sigterm(["api", "--port", str(port)], _env(sqlite_url, tmp_path, TMPDIR=str(temp)),
                               tmp_path / "api.log", folder)
    assert not left.exists(), "the API left its metrics folder behind"


def _env(sqlite_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESCENT_", "PROMETHEUS_"))}
    return env | {"DESCENT_HOME": str(tmp_path / "home"), "DESCENT_DATABASE_URL": sqlite_url, **extra}


def _stopped_by_sigterm(args: list[str], env: dict[str, str], log: Path,
                        folder: Callable[[subprocess.Popen], Path | None]) -> Path:
    """Run ``descent <args>`` until ``folder`` names its metrics folder (None: not ready yet),
    stop it with SIGTERM, expect exit 0, and return the folder."""
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("descent")), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (found := folder(proc)) is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert found.is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return found


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
