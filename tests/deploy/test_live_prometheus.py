"""The monitoring in deploy/, run for real: compose's api, scheduler and worker commands as
local processes on PostgreSQL and Redis with .env.example's API keys (auth on, as compose runs
them), a real Prometheus (Debian's) with the project's own config and rules (only the targets
rewritten to local ports, and the metrics key file to a temporary one) scraping them, then every
dashboard and alert expression evaluated by it and every SQL panel run on the stack's database.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from sqlalchemy import create_engine, text

from services.examples import statquest_job
from services.stack import wait_until_ready
from tests.deploy.compose import METRICS_KEY, ROOT, SERVICES, TENANT_KEYS, bearer
from tests.deploy.dashboards import prometheus_queries, sql_queries
from tests.e2e.conftest import free_port

KEYS = ("DESCENT_API_KEYS", "DESCENT_METRICS_KEY")
HEADERS = bearer(next(iter(TENANT_KEYS.values())))  # a tenant's key, for the workload
REDIS_DB = 13
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus not installed")]


@dataclass
class Stack:
    api: str
    ports: dict[str, int]  # service -> metrics port
    database_url: str


def _argv(service: str, api_port: int, metrics_port: int) -> list[str]:
    """The service's own compose command, with local ports and this venv's `descent`."""
    argv = [str(a) for a in SERVICES[service]["command"]]
    assert argv[0] == "descent", service
    argv[0] = str(Path(sys.executable).with_name("descent"))
    swap = {"8000": str(api_port), "9100": str(metrics_port), "0.0.0.0": "127.0.0.1"}
    return [swap.get(a, a) for a in argv]


@pytest.fixture
def stack(pg_url: str, tmp_path: Path) -> Iterator[Stack]:
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESCENT_", "PROMETHEUS_"))}
    env |= {"DESCENT_DATABASE_URL": pg_url, "DESCENT_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "DESCENT_HOME": str(tmp_path / "home")}
    env |= {key: SERVICES["api"]["environment"][key] for key in KEYS}  # compose's: auth on
    api_port = free_port()
    ports = {name: free_port() for name in ("scheduler", "worker")}
    subprocess.run(_argv("migrate", api_port, 0), env=env, check=True, timeout=120)
    procs = [subprocess.Popen(_argv(name, api_port, ports.get(name, 0)), env=env, start_new_session=True,
                              stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
             for name in ("api", "scheduler", "worker")]
    try:
        wait_until_ready(f"http://127.0.0.1:{api_port}", 60, lambda: _alive(procs))
        yield Stack(f"http://127.0.0.1:{api_port}", ports, pg_url)
    finally:
        _stop(procs)


def _alive(procs: list[subprocess.Popen]) -> None:
    assert all(p.poll() is None for p in procs), "a compose service exited early"


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def local_config(stack: Stack, folder: Path) -> Path:
    """deploy/prometheus/prometheus.yml with each job's targets pointed at the local processes
    (1 s scrapes so rates have points quickly) and the API's key file at a temporary one holding
    the metrics key, as compose's prometheus entrypoint writes it; everything else as shipped."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "rules" / "*.yml")]
    local = {"descent-api": stack.api.removeprefix("http://"),
             "descent-scheduler": f"127.0.0.1:{stack.ports['scheduler']}",
             "descent-worker": f"127.0.0.1:{stack.ports['worker']}"}
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        if job["job_name"] in local:
            job["static_configs"] = [{"targets": [local[job["job_name"]]]}]
        elif job["job_name"] != "prometheus":
            job["static_configs"] = []  # no gpu worker here
        if "authorization" in job:
            key_file = folder / f"{job['job_name']}.key"
            key_file.write_text(METRICS_KEY)
            job["authorization"]["credentials_file"] = str(key_file)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = local_config(stack, tmp_path)
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def workload(api: str) -> tuple[str, str]:
    """A halving sweep and a diverging job, trained to the end: (sweep id, a member's id)."""
    base = statquest_job() | {"init": {"seed": 0}, "trainable": None, "stop": {"max_steps": 60},
                              "checkpoint_every": 20}
    body = {"name": "live", "base": base, "grid": {"learning_rate": [0.01, 0.05, 0.1, 0.2, 0.3, 1e6]},
            "early_stopping": {"type": "successive_halving", "min_steps": 20, "reduction_factor": 3}}
    sweep = httpx.post(f"{api}/v1/sweeps", json=body, headers=HEADERS, timeout=10).json()
    deadline = time.monotonic() + 90
    while httpx.get(f"{api}/v1/sweeps/{sweep['id']}", headers=HEADERS, timeout=10).json()["status"] != "finished":
        assert time.monotonic() < deadline, "the sweep did not finish"
        time.sleep(0.3)
    members = httpx.get(f"{api}/v1/jobs", params={"sweep_id": sweep["id"]}, headers=HEADERS,
                        timeout=10).json()["items"]
    return sweep["id"], next(m["id"] for m in members if m["stop_reason"] != "diverged")


def query(prometheus: str, expr: str) -> dict:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]


def wait_for(prometheus: str, expr: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not query(prometheus, expr)["result"]:
        assert time.monotonic() < deadline, f"{what}: no result for {expr}"
        time.sleep(0.5)


def empty_panels(prometheus: str) -> list[str]:
    """Every dashboard query (alert rules may be empty: nothing is firing) without a series."""
    return [f"{where}: {expr}" for where, expr in prometheus_queries()
            if not where.startswith("rules/") and not query(prometheus, expr)["result"]]


TARGETS_UP = 'count(up{job=~"descent-api|descent-scheduler|descent-worker"} == 1) == 3'


def targets(prometheus: str) -> str:
    """Each target's job, health and last scrape error, as Prometheus reports them."""
    found = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return "; ".join(f"{t['labels']['job']} {t['scrapeUrl']}: {t['health']} {t['lastError']!r}" for t in found)


def test_every_dashboard_and_alert_query_runs_on_a_live_scrape(stack: Stack, prometheus: str) -> None:
    assert httpx.get(f"{stack.api}/metrics", timeout=10).status_code == 401  # auth is on: the key is needed
    try:
        wait_for(prometheus, 'up{job="descent-api"} == 1', "the API scraped with the metrics key")
        wait_for(prometheus, TARGETS_UP, "every local target scraped")  # before the counters move
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ntargets: {targets(prometheus)}") from None
    sweep_id, job_id = workload(stack.api)
    wait_for(prometheus, "sum(rate(descent_training_steps_total[1m])) > 0", "the training steps scraped")
    # A rate needs two scrapes of a series: one made by the workload's last requests may have
    # been scraped once so far. Panels get a few more scrapes, and none may stay empty.
    deadline = time.monotonic() + 30
    while (empty := empty_panels(prometheus)) and time.monotonic() < deadline:
        time.sleep(1)
    assert empty == [], "panels without a series:\n" + "\n".join(empty)
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert rules and all(r["health"] == "ok" for g in rules for r in g["rules"]), rules

    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            for where, sql in sql_queries({"sweep": sweep_id, "job": job_id}):
                assert conn.execute(text(sql)).fetchall(), f"{where} returned no rows"
    finally:
        engine.dispose()
