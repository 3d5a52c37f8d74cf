"""Load under chaos: 2,000 jobs over HTTP (a burst, then a steady stream) on 4 worker processes
while a chaos loop SIGKILLs a random worker pool process every few seconds. Nothing may be lost
or repeated: every job succeeds, every step has exactly one SSR, every final parameter set is
bit-equal to the engine's fault-free run of the same spec.

Usage (from the repository root; part of ``make bench``)::

    .venv/bin/python benchmarks/chaos_load.py                      # embedded stack (SQLite + files)
    .venv/bin/python benchmarks/chaos_load.py --stack postgres     # PostgreSQL + Redis
    .venv/bin/python benchmarks/chaos_load.py --quick              # 200 jobs: a smoke run

Printed: p50/p99 of ``POST /v1/jobs`` (burst and stream), the kills, and per kill, measured
while the load goes on: seconds until the jobs the killed process held are back in the queue
(its lease lapsed and the scheduler requeued them), and until none of them waits any more
(this also waits for a free worker: the others are busy with their own packs). Leases are
short here (5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import Engine, text

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sweeps import cpu_text, running_stack, wait_all_finished  # noqa: E402
from services import engine as descent_engine  # noqa: E402
from services.db.arrays import unpack  # noqa: E402
from services.examples import statquest_job  # noqa: E402
from services.stack import Stack  # noqa: E402 (the chaos thread's type)

# Short leases so recoveries take seconds; max_attempts (the poison-job guard, tested in the
# fault matrix) out of the way, since random kills may hit one pack several times.
FAST_RECOVERY = {"DESCENT_LEASE_SECONDS": "5", "DESCENT_HEARTBEAT_SECONDS": "1",
                 "DESCENT_REDISPATCH_SECONDS": "3", "DESCENT_SCHEDULER_LEASE_SECONDS": "3",
                 "DESCENT_MAX_ATTEMPTS": "1000"}


@dataclass(frozen=True)
class Plan:
    burst: int = 1000
    stream: int = 1000
    stream_per_s: float = 100.0
    steps: int = 3000
    checkpoint_every: int = 500
    kill_every_s: float = 3.0
    clients: int = 8
    timeout_s: float = 600.0


QUICK = Plan(burst=100, stream=100, stream_per_s=50.0, steps=2000, kill_every_s=2.0, timeout_s=180.0)


def job(i: int, plan: Plan) -> dict:
    return statquest_job() | {"name": f"load-{i}", "init": {"seed": i}, "trainable": None,
                              "learning_rate": 0.01 + 0.0001 * (i % 500),
                              "stop": {"max_steps": plan.steps, "min_step_size": 0.0},
                              "checkpoint_every": plan.checkpoint_every}


# ----------------------------------------------------------------------------- load


def post_all(url: str, bodies: list[dict], clients: int, per_second: float | None) -> list[float]:
    """POST every body (``per_second`` None: as fast as the clients go); latencies in ms."""
    latencies: list[float] = []
    start = time.perf_counter()

    def send(indexed: tuple[int, dict]) -> None:
        i, body = indexed
        if per_second:
            time.sleep(max(0.0, start + i / per_second - time.perf_counter()))
        with httpx.Client(base_url=url, timeout=60) as http:
            for attempt in range(5):  # a connection refused while the API restarts: retry with its key
                try:
                    t0 = time.perf_counter()
                    answer = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": body["name"]})
                    answer.raise_for_status()
                    latencies.append(1000 * (time.perf_counter() - t0))
                    return
                except httpx.HTTPError:
                    if attempt == 4:
                        raise
                    time.sleep(0.5)

    with ThreadPoolExecutor(clients if per_second is None else 32) as pool:
        list(pool.map(send, enumerate(bodies)))
    return latencies


# ----------------------------------------------------------------------------- chaos


class Chaos(threading.Thread):
    """SIGKILLs a random busy worker pool process every ``every`` seconds, and times each kill's
    recovery while the load goes on: until the victims (the jobs running on that pid) are back
    in the queue (the lease lapsed and the scheduler requeued them), and until none of them
    waits any more: each runs under another pid or has finished (which also waits for a free
    worker)."""

    def __init__(self, stack: Stack, database: Engine, every: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.database, self.every = stack, database, every
        self.kills = 0
        self.requeued: list[float] = []
        self.resumed: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        rng = random.Random(0)
        while not self.done.wait(self.every):
            held = self._held()
            if not held:
                continue
            pid = rng.choice(sorted(held))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills += 1
            threading.Thread(target=self._watch, args=(time.monotonic(), pid), daemon=True).start()

    def _held(self) -> dict[int, set[str]]:
        with self.database.connect() as conn:
            rows = conn.execute(text("SELECT worker_pid, id FROM jobs WHERE status = 'running'")).all()
        held: dict[int, set[str]] = {}
        for pid, job_id in rows:
            if pid and Path(f"/proc/{pid}").exists():
                held.setdefault(pid, set()).add(job_id)
        return held

    def _watch(self, killed_at: float, pid: int, timeout: float = 300) -> None:
        """A victim keeps the dead pid in its row until another worker claims it."""
        requeued = None
        while time.monotonic() - killed_at < timeout:
            with self.database.connect() as conn:
                counts = dict(conn.execute(text("SELECT status, count(*) FROM jobs WHERE worker_pid = :pid AND "
                                                "status IN ('queued', 'running') GROUP BY status"), {"pid": pid}).all())
            if requeued is None and not counts.get("running"):
                requeued = time.monotonic() - killed_at
                self.requeued.append(requeued)
            if requeued is not None and not counts.get("queued"):
                self.resumed.append(time.monotonic() - killed_at)
                return
            time.sleep(0.1)


# ----------------------------------------------------------------------------- checks


def verify(database: Engine, plan: Plan, bodies: list[dict]) -> dict[str, int]:
    """Lost, duplicated-step and parameter-mismatch counts against the engine's own run."""
    with database.connect() as conn:
        jobs = {r.name: r for r in conn.execute(text("SELECT id, name, status, step, lost_leases FROM jobs")).all()}
        chunks = conn.execute(text("SELECT job_id, first_step, ssr FROM history_chunks")).all()
        finals = conn.execute(text("SELECT c.job_id, c.manifest, c.data FROM checkpoints c JOIN jobs j "
                                   "ON j.id = c.job_id AND j.step = c.step")).all()
    covered: dict[str, list[tuple[int, int]]] = {}
    for job_id, first, ssr in chunks:
        n = len(ssr) // 8 if isinstance(ssr, (bytes, memoryview)) else len(ssr)
        covered.setdefault(job_id, []).append((int(first), n))
    repeated = sum(1 for r in jobs.values() if not _contiguous(covered.get(r.id, []), r.step))
    expected = reference(plan, bodies)
    stored = {job_id: unpack(json.loads(manifest) if isinstance(manifest, str) else manifest, data)
              for job_id, manifest, data in finals}
    mismatched = sum(1 for b in bodies if not _equal(stored.get(jobs[b["name"]].id), expected[b["name"]]))
    return {"jobs": len(jobs), "lost or unfinished": len(bodies) - sum(r.status == "succeeded" for r in jobs.values()),
            "duplicates": len(jobs) - len({r.name for r in jobs.values()}),
            "jobs with a missing or repeated step": repeated, "parameter mismatches": mismatched,
            "most lost leases of one job": max(r.lost_leases for r in jobs.values())}


def _contiguous(rows: list[tuple[int, int]], last: int) -> bool:
    steps = [s for first, n in sorted(rows) for s in range(first, first + n)]
    return steps == list(range(last + 1))


def _equal(stored: dict | None, expected: dict[str, np.ndarray]) -> bool:
    return stored is not None and all(np.array_equal(stored[f"parameters/{k}"], v) for k, v in expected.items())


def reference(plan: Plan, bodies: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """The specs trained by the engine in this process without faults, as one pack (a member's
    numbers do not depend on its pack mates: the fault matrix checks that bit for bit)."""
    first = bodies[0]
    arch = descent_engine.Architecture(tuple(first["architecture"]["layers"]), first["architecture"]["activation"],
                                       first["architecture"]["output_activation"])
    n = len(bodies)
    config = descent_engine.PackConfig(
        learning_rate=np.array([b["learning_rate"] for b in bodies], dtype=np.float64),
        trainable={name: np.ones(n, dtype=bool) for name in arch.parameter_shapes()},
        max_steps=np.full(n, plan.steps, dtype=np.int64), min_step_size=np.zeros(n),
        target_ssr=np.full(n, -np.inf), momentum=None, batch_size=None, batch_seed=0)
    starts = [descent_engine.init_parameters(arch, b["init"]["seed"]) for b in bodies]
    stacked = {name: np.stack([start[name] for start in starts]) for name in starts[0]}
    x, y = np.array(first["data"]["x"]), np.array(first["data"]["y"])
    state = descent_engine.init_state(np, arch, config, stacked, x, y)
    state, _ = descent_engine.train(np, arch, config, state, x, y, plan.steps)
    return {b["name"]: {k: np.asarray(v[i]) for k, v in state.parameters.items()} for i, b in enumerate(bodies)}


# ----------------------------------------------------------------------------- run


def run(kind: str, plan: Plan) -> dict:
    bodies = [job(i, plan) for i in range(plan.burst + plan.stream)]
    with running_stack(kind, workers=4, settings=FAST_RECOVERY) as (stack, database):
        chaos = Chaos(stack, database, plan.kill_every_s)
        chaos.start()
        started = time.perf_counter()
        burst = post_all(stack.url, bodies[:plan.burst], plan.clients, None)
        stream = post_all(stack.url, bodies[plan.burst:], plan.clients, plan.stream_per_s)
        wait_all_finished(stack, database, plan.timeout_s)
        chaos.done.set()
        chaos.join()
        seconds = time.perf_counter() - started
        time.sleep(0.5)  # the last watchers see the end
        checks = verify(database, plan, bodies)
    return {"stack": kind, "seconds": round(seconds, 1), "kills": chaos.kills,
            "POST burst p50/p99 ms": _quantiles(burst), "POST stream p50/p99 ms": _quantiles(stream),
            "requeued s (median/max)": _quantiles(chaos.requeued, (50, 100), 1),
            "running again s (median/max)": _quantiles(chaos.resumed, (50, 100), 1)} | checks


def _quantiles(values: list[float], qs: tuple[int, int] = (50, 99), digits: int = 1) -> str:
    if not values:
        return "-"
    return "/".join(f"{np.percentile(values, q):.{digits}f}" for q in qs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stack", choices=["embedded", "postgres", "both"], default="embedded")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    kinds = ["embedded", "postgres"] if args.stack == "both" else [args.stack]
    rows = [run(kind, plan) for kind in kinds]
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"# load under chaos: {plan.burst} burst + {plan.stream} stream jobs, 4 workers, a kill every "
              f"{plan.kill_every_s:g} s ({cpu_text()})")
        for row in rows:
            print("  " + ", ".join(f"{k}: {v}" for k, v in row.items()))
    bad = any(r["lost or unfinished"] or r["duplicates"] or r["jobs with a missing or repeated step"]
              or r["parameter mismatches"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
