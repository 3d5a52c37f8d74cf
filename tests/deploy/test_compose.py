"""docker-compose.yml, checked without a Docker engine.

The file's structure is checked as data, then its migrate, api, scheduler and worker services run as
local processes with their own commands, only the service host names swapped for this machine's
PostgreSQL and Redis: a job submitted over HTTP must train to the StatQuest result.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from services.stack import wait_until_ready
from tests.e2e.conftest import free_port
from services.examples import STATQUEST_B3, statquest_job

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
REDIS_DB = 11
pytestmark = pytest.mark.slow


def test_backing_services_have_health_checks_and_no_published_ports() -> None:
    for name in ("postgres", "redis"):
        assert SERVICES[name]["healthcheck"]["test"], name
        assert "ports" not in SERVICES[name], f"{name} must not be published"


def test_app_services_build_the_project_and_wait_for_their_dependencies() -> None:
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "scheduler", "worker"):
        assert SERVICES[name]["build"] == "."
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    for name in ("migrate", "api", "scheduler", "worker"):
        env = SERVICES[name]["environment"]
        assert re.match(r"postgresql\+psycopg://descent:.+@postgres:5432/descent$", env["DESCENT_DATABASE_URL"])
        assert re.match(r"redis://:.+@redis:6379/0$", env["DESCENT_BROKER_URL"])


def test_dockerfile_copies_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def _local_argv(service: str, port: int) -> list[str]:
    """The service's own command; `descent` resolves to this venv's script, port made free."""
    argv = list(SERVICES[service]["command"])
    assert argv[0] == "descent"
    argv[0] = str(Path(sys.executable).with_name("descent"))
    return [str(port) if a == "8000" else "127.0.0.1" if a == "0.0.0.0" else a for a in argv]


@pytest.fixture
def compose_env(pg_url: str, tmp_path: Path) -> dict[str, str]:
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}
    env.update(DESCENT_DATABASE_URL=pg_url, DESCENT_BROKER_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
               DESCENT_HOME=str(tmp_path / "home"))
    return env


@pytest.fixture
def compose_up(compose_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    subprocess.run(_local_argv("migrate", port), env=compose_env, check=True, timeout=120)
    procs = [
        subprocess.Popen(_local_argv(name, port), env=compose_env, start_new_session=True,
                         stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
        for name in ("api", "scheduler", "worker")
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, procs)
        yield url
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    def alive() -> None:
        assert all(p.poll() is None for p in procs), "a compose service exited early"

    wait_until_ready(url, timeout, alive)


def test_compose_services_train_the_statquest_job(compose_up: str) -> None:
    created = httpx.post(f"{compose_up}/v1/jobs", json=statquest_job(), timeout=10)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 60
    while (job := httpx.get(f"{compose_up}/v1/jobs/{job_id}", timeout=5).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    layers = httpx.get(f"{compose_up}/v1/jobs/{job_id}/parameters", timeout=5).json()["layers"]
    assert round(layers[1]["bias"][0], 2) == STATQUEST_B3
    assert layers[1]["weight"] == [[-1.22, -2.30]]
