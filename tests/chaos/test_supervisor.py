"""``descent up`` keeps serving when its children die (fault matrix, the embedded supervisor)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import Running, start_up  # noqa: F401 (the fixture)
from tests.worker.conftest import environment

from .checks import assert_nothing_lost
from .harness import FAST, LONG, chaos_job, children, eventually

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def child(pid: int, marker: str) -> int:
    (found,) = [p for p, command in children(pid).items() if marker in command]
    return found


def test_descent_up_restarts_a_killed_worker_and_api(start_up: Callable[..., Running],  # noqa: F811
                                                     recovery: Callable[..., None]) -> None:
    """SIGKILL of the stack's worker (its whole group: parent and pool child) and of its API
    (uvicorn's supervisor and its processes) while a job trains: ``descent up`` restarts both,
    /readyz answers 200 again within ~10 s (15 s allowed: a loaded 2-core machine), and the job finishes as in a fault-free run."""
    running = start_up(**FAST)
    document = chaos_job(LONG)
    with httpx.Client(base_url=running.url, timeout=10) as http:
        answer = http.post("/v1/jobs", json=document)
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
        eventually(lambda: http.get(f"/v1/jobs/{job_id}").json()["step"] >= 3000, 30, "the job trains")
        worker, api = child(running.proc.pid, "celery"), child(running.proc.pid, " api")
        for pid in (worker, api):  # each child of descent up leads its own process group
            os.killpg(pid, signal.SIGKILL)
        killed = time.monotonic()

        def ready() -> bool:
            assert running.proc.poll() is None, f"descent up exited:\n{running.log.read_text()[-3000:]}"
            try:
                return http.get("/readyz", timeout=1).status_code == 200 and child(running.proc.pid, " api") != api
            except (httpx.HTTPError, ValueError):
                return False

        eventually(ready, 15, "/readyz answers 200 from a restarted API")
        recovery(time.monotonic() - killed, "API back (readyz 200)")
        eventually(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", 60,
                   f"the job finishes:\n{running.log.read_text()[-3000:]}")
    assert child(running.proc.pid, "celery") != worker
    home = running.home
    with environment({"DESCENT_HOME": str(home), "DESCENT_DATABASE_URL": f"sqlite:///{home / 'descent.db'}",
                      "DESCENT_BROKER_URL": "filesystem://"}):
        assert_nothing_lost({job_id: document}, float(FAST["DESCENT_LEASE_SECONDS"]))
