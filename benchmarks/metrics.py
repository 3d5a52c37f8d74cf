"""Metrics benchmark: one scrape of the API's ``/metrics`` with 50 concurrent sweeps of 1000
members (bar: <= 100 ms), on SQLite and on PostgreSQL.

Usage (from the repository root; ``make bench-metrics``)::

    .venv/bin/python benchmarks/metrics.py            # full run
    .venv/bin/python benchmarks/metrics.py --quick    # smoke run (5 sweeps of 50)

The sweeps are submitted through the service (``services.sweeps.submit_sweep``), then their
members' rows are given a mix of states as workers would leave them mid-run (running at various
steps, queued, parked, succeeded, early-stopped, diverged, with random SSRs), so every per-sweep
series is computed from 50,000 live members. On PostgreSQL the bulk update is followed by the
``VACUUM ANALYZE`` that autovacuum would run within a minute. A real ``descent api`` process (one uvicorn
process) serves the scrapes; the time is the client's, from request to the last byte, over
``scrapes`` scrapes spaced like Prometheus's (median and worst). A scrape answers with the
database reading taken after the previous one (``services/metrics_db.py``); "reading ms" is a
scrape that reads the database itself (``DESCENT_METRICS_MAX_AGE=0``), i.e. the work each scrape
starts in the background. The reference is ``GET /healthz`` on the same process: the HTTP
round trip alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import bindparam, select, update

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.service import bench_database, environment, free_port  # noqa: E402
from benchmarks.sweeps import cpu_text  # noqa: E402
from services.stack import wait_until_ready  # noqa: E402

BAR_MS = 100.0


@dataclass(frozen=True)
class Plan:
    sweeps: int = 50
    members: int = 1000
    scrapes: int = 30


QUICK = Plan(sweeps=5, members=50, scrapes=5)


def fill(plan: Plan, database_url: str) -> None:
    """Submit the sweeps, then write their members' rows as a running fleet would."""
    from services.config import get_settings
    from services.db.models import Job
    from services.db.session import reset_engine, session_scope
    from services.examples import statquest_job
    from services.sweep_spec import SweepCreate
    from services.sweeps import submit_sweep

    get_settings.cache_clear()
    reset_engine()
    base = statquest_job() | {"init": {"seed": 0}, "trainable": None, "stop": {"max_steps": 10_000}}
    rates = np.geomspace(0.001, 0.5, plan.members).tolist()
    for i in range(plan.sweeps):
        submit_sweep(SweepCreate.model_validate({"name": f"scan-{i:02d}", "base": base,
                                                 "grid": {"learning_rate": rates}}))
    rng = np.random.default_rng(0)
    with session_scope() as session:
        ids = list(session.scalars(select(Job.id)))
        states = rng.choice(["running", "queued", "parked", "succeeded", "early", "diverged"], size=len(ids),
                            p=[0.4, 0.2, 0.05, 0.2, 0.1, 0.05])
        rows = [_row(job_id, state, rng) for job_id, state in zip(ids, states)]
        statement = (update(Job.__table__).where(Job.__table__.c.id == bindparam("b_id"))
                     .values(status=bindparam("b_status"), step=bindparam("b_step"), ssr=bindparam("b_ssr"),
                             stop_reason=bindparam("b_reason"), rung=bindparam("b_rung")))
        session.execute(statement, rows)
    reset_engine()
    _settle(database_url)


def _settle(database_url: str) -> None:
    """What autovacuum does within a minute of a bulk change (visibility map for index-only
    scans, planner statistics); the benchmark does not wait for it."""
    from sqlalchemy import create_engine, text

    if not database_url.startswith("postgresql"):
        return
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE jobs"))
    engine.dispose()


def _row(job_id: str, state: str, rng: np.random.Generator) -> dict:
    step = int(rng.integers(0, 10_000))
    ssr = None if state == "diverged" else float(rng.lognormal(0.0, 2.0))
    status = {"parked": "queued", "early": "succeeded"}.get(state, state)
    return {"b_id": job_id, "b_status": status, "b_step": 10_000 if state == "succeeded" else step,
            "b_ssr": ssr, "b_reason": {"early": "early_stopped", "succeeded": "max_steps",
                                       "diverged": "diverged"}.get(state),
            "b_rung": 300 if state == "parked" else None}


def measure(plan: Plan, database_url: str, home: Path) -> dict[str, float]:
    """Scrapes as Prometheus makes them (spaced, here 0.5 s instead of 5 s), then scrapes that
    each read the database themselves (DESCENT_METRICS_MAX_AGE=0): the cost of one reading."""
    got = _scrapes(plan, database_url, home, max_age="30", pause=0.5)
    reading = _scrapes(plan, database_url, home, max_age="0", pause=0.0)
    return got | {"reading_ms": reading["median_ms"]}


def _scrapes(plan: Plan, database_url: str, home: Path, max_age: str, pause: float) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "DESCENT_DATABASE_URL": database_url, "DESCENT_HOME": str(home),
           "DESCENT_METRICS_MAX_AGE": max_age}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "api", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 60)
        with httpx.Client(timeout=30) as client:
            text = client.get(f"{url}/metrics").text  # warm: connections, caches
            series = sum(1 for line in text.splitlines() if line.startswith("descent_sweep_"))
            scrape = _times(client, f"{url}/metrics", plan.scrapes, pause)
            health = _times(client, f"{url}/healthz", plan.scrapes, 0.0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"median_ms": statistics.median(scrape), "worst_ms": max(scrape),
            "health_ms": statistics.median(health), "sweep_series": series}


def _times(client: httpx.Client, url: str, n: int, pause: float) -> list[float]:
    found = []
    for _ in range(n):
        time.sleep(pause)
        started = time.perf_counter()
        answer = client.get(url)
        found.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, answer.text
    return found


def run(kind: str, plan: Plan) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix=f"descent-bench-metrics-{kind}-"))
    if kind == "sqlite":
        url = f"sqlite:///{home / 'descent.db'}"
        from services.db.migrate import upgrade

        upgrade(url)
        with environment({"DESCENT_DATABASE_URL": url, "DESCENT_HOME": str(home)}):
            fill(plan, url)
        return measure(plan, url, home)
    with bench_database() as url, environment({"DESCENT_DATABASE_URL": url, "DESCENT_HOME": str(home)}):
        fill(plan, url)
        return measure(plan, url, home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.json:
        rows = [{"database": kind, "sweeps": plan.sweeps, "members": plan.members} | run(kind, plan)
                for kind in ("sqlite", "postgres")]
        print(json.dumps(rows))
        return 0
    print(f"# /metrics scrape with {plan.sweeps} concurrent sweeps x {plan.members} members ({cpu_text()})")
    print(f"{'database':<10} {'median ms':>10} {'worst ms':>10} {'/healthz ms':>12} {'reading ms':>11} "
          f"{'series':>7}  bar <= {BAR_MS:.0f} ms (median)")
    ok = True
    for kind in ("sqlite", "postgres"):
        got = run(kind, plan)
        passed = got["median_ms"] <= BAR_MS
        ok &= passed
        print(f"{kind:<10} {got['median_ms']:>10.1f} {got['worst_ms']:>10.1f} {got['health_ms']:>12.2f} "
              f"{got['reading_ms']:>11.1f} {got['sweep_series']:>7}  {'PASS' if passed else 'FAIL'}")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
