"""Metric totals equal the database's truth on a real ``descent up``: two API processes, two
workers whose prefork children are recycled after every pack, and a scheduler, all counting
into one metrics folder that the API's ``/metrics`` merges.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from services.examples import statquest_job
from tests.e2e.conftest import ROOT, descent, free_port, kill_leftovers, stack_env, wait_ready

pytestmark = pytest.mark.slow
JOBS = 12


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def workload(url: str) -> None:
    """Independent jobs from many connections, a diverging one, a sweep with successive
    halving and a cancelled long job: every kind of finish and both counting sides."""
    def post(i: int) -> None:
        body = statquest_job() | {"name": f"j{i}", "learning_rate": 0.01 * (i + 1)}
        with httpx.Client() as client:  # a new connection each: both API processes serve some
            assert client.post(f"{url}/v1/jobs", json=body).status_code == 201

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, range(JOBS)))
    diverging = statquest_job() | {"name": "boom", "learning_rate": 1e6, "trainable": None}
    assert httpx.post(f"{url}/v1/jobs", json=diverging).status_code == 201
    base = statquest_job() | {"init": {"seed": 0}, "trainable": None, "stop": {"max_steps": 90},
                              "checkpoint_every": 30}
    sweep = {"name": "halving", "base": base, "grid": {"learning_rate": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3]},
             "early_stopping": {"type": "successive_halving", "min_steps": 30, "reduction_factor": 3}}
    assert httpx.post(f"{url}/v1/sweeps", json=sweep).status_code == 201
    long = statquest_job() | {"name": "long", "init": {"seed": 1}, "trainable": None,
                              "stop": {"max_steps": 1_000_000}, "checkpoint_every": 1000}
    job = httpx.post(f"{url}/v1/jobs", json=long).json()
    assert httpx.post(f"{url}/v1/jobs/{job['id']}/cancel").status_code == 200


def database_truth(home: Path) -> dict[str, object]:
    with sqlite3.connect(home / "descent.db") as db:
        return {
            "jobs": db.execute("SELECT count(*) FROM jobs").fetchone()[0],
            "unfinished": db.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0],
            "status": dict(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()),
            "steps": db.execute("SELECT sum(step) FROM jobs").fetchone()[0],
            "claimed": db.execute("SELECT count(*) FROM jobs WHERE attempts >= 1").fetchone()[0],
            "early": db.execute("SELECT count(*) FROM jobs WHERE stop_reason = 'early_stopped'").fetchone()[0],
            "pids": {r[0] for r in db.execute("SELECT DISTINCT worker_pid FROM jobs WHERE worker_pid IS NOT NULL")},
        }


def pids_counting(folder: Path, sample: str) -> set[int]:
    """Processes whose own metric file holds a non-zero ``sample``."""
    found = set()
    for path in folder.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == sample and value > 0:
                found.add(int(path.stem.split("_")[-1]))
    return found


def test_totals_equal_the_database_across_recycled_children_and_two_api_processes(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "up.log"
    env = stack_env(home, DESCENT_WORKER_MAX_TASKS_PER_CHILD="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(descent("up", "--port", str(port), "--workers", "2", "--api-workers", "2"),
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(url, proc, log)
        workload(url)
        deadline = time.monotonic() + 120
        while (truth := database_truth(home))["unfinished"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert truth["unfinished"] == 0, log.read_text()[-3000:]
        got = scrape(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        kill_leftovers(home)
    assert truth["early"] > 0 and truth["status"].get("diverged") == 1 and truth["status"].get("cancelled") == 1
    assert got[("descent_jobs_submitted_total", ())] == truth["jobs"]
    for status in ("succeeded", "diverged", "failed", "cancelled"):
        assert got[("descent_jobs_finished_total", (("status", status),))] == truth["status"].get(status, 0), status
        assert got[("descent_jobs", (("status", status),))] == truth["status"].get(status, 0), status
    assert got[("descent_training_steps_total", (("queue", "cpu"),))] == truth["steps"]
    assert got[("descent_queue_wait_seconds_count", (("queue", "cpu"),))] == truth["claimed"]
    posted = ("descent_http_requests_total", (("code", "201"), ("method", "POST"), ("route", "/v1/jobs")))
    assert got[posted] == JOBS + 2
    # The totals above summed processes that are gone: every pack had a child of its own.
    assert len(truth["pids"]) >= 3
    assert not any(os.path.exists(f"/proc/{pid}") for pid in truth["pids"])
    assert len(pids_counting(home / "metrics", "descent_http_requests_total")) == 2
