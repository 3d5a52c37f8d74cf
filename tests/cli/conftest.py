"""One real embedded stack per test module (``descent up`` on a free port, its home in a tmp
folder), the fixtures of ``tests/e2e`` reused; nothing of ours is mocked."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ROOT, Running, descent, free_port, kill_leftovers, stack_env, wait_ready


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``descent up --workers 1 --api-workers 1``, with the module's ``STACK_ENV`` (e.g. keys);
    stopped like Ctrl-C, leftovers killed."""
    folder = tmp_path_factory.mktemp("cli-stack")
    home, port, log = folder / "home", free_port(), folder / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            descent("up", "--port", str(port), "--workers", "1", "--api-workers", "1"), cwd=ROOT,
            env=stack_env(home, **getattr(request.module, "STACK_ENV", {})), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Running(f"http://127.0.0.1:{port}", home, proc, log)
    try:
        wait_ready(running.url, proc, log)
        yield running
    finally:
        running.stop()
        kill_leftovers(home)
