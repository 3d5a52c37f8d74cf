"""Service benchmark: history ingestion into PostgreSQL, and the real stack's submit latency and
throughput with Redis + PostgreSQL.

Usage (from the repository root; ``make bench-service`` runs the first)::

    .venv/bin/python benchmarks/service.py            # full run, human report
    .venv/bin/python benchmarks/service.py --quick    # smoke run, seconds; timings mean nothing
    .venv/bin/python benchmarks/service.py --json     # one JSON list on stdout
    .venv/bin/python benchmarks/service.py --skip-stack   # part 1 only

Part 1 writes SSR history exactly as the worker does: per checkpoint ONE transaction holding one
``history_chunks`` row per job (``services.db.checkpoints.write_history_chunks``), rows of 100
points (checkpoint_every=100) and of 1000. Bar: >= 1,000,000 SSR points/s. It then reads one
job's curve back with the SQL a Grafana panel would use and checks it step by step.

Part 2 starts the production processes as subprocesses under ``descent up``'s supervisor (the
API, the scheduler and two workers) on the benchmark database and a flushed Redis database, then
measures (a) submit-to-running latency of single small jobs over HTTP and (b) submissions per
second from 8 concurrent clients, plus jobs finished per second once they all finished.

Everything runs against a fresh database ``descent_bench_<random>`` that is dropped at the end,
even on errors; every subprocess is stopped (terminate, then kill its process group).
All numbers share this machine's cores with PostgreSQL, Redis, the API and the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

if __package__ in (None, ""):  # run as a file: make `services` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.db import repository  # noqa: E402 (after the path fix above)
from services.db.models import DEFAULT_TENANT, Job  # noqa: E402
from services.db.session import make_engine  # noqa: E402
from services.stack import Stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BROKER_URL = "redis://127.0.0.1:6379/13"
INGEST_BAR = 1_000_000  # SSR points per second
FINISHED = ("succeeded", "diverged", "failed", "cancelled")
POLL_S = 0.005


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full benchmark or the seconds-long smoke test."""

    jobs: int = 1000
    ingest_points: int = 2_000_000  # per row length
    row_lengths: tuple[int, ...] = (100, 1000)
    latency_jobs: int = 30
    throughput_jobs: int = 300
    concurrency: int = 8
    finish_timeout_s: float = 600.0


QUICK = Plan(jobs=50, ingest_points=50_000, latency_jobs=5, throughput_jobs=24, finish_timeout_s=120.0)


@dataclass
class Result:
    """One reported figure; ``bar``/``passed`` only where the issue sets a target."""

    section: str
    name: str
    value: float
    unit: str
    bar: float | None = None
    passed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


def log(message: str) -> None:
    """Progress goes to stderr so ``--json`` keeps stdout clean."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- database


@contextmanager
def bench_database() -> Iterator[str]:
    """A fresh, migrated database that is dropped WITH (FORCE) whatever happens, so a crashed
    run never leaves a database behind nor a connection that blocks the drop."""
    from services.db.migrate import upgrade  # Alembic is only needed here

    name = f"descent_bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def server_version(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SHOW server_version")).scalar())


# ----------------------------------------------------------------------------- part 1: ingestion


def seed_jobs(engine: Engine, n: int) -> list[str]:
    """Jobs through the repository, as the API creates them (one shared dataset)."""
    x = np.array([[0.0], [0.5], [1.0]])
    y = np.array([[0.0], [1.0], [0.0]])
    spec = {"architecture": {"layers": [1, 2, 1]}, "learning_rate": 0.1}
    with Session(engine) as session, session.begin():
        dataset = repository.store_dataset(session, f"bench-{uuid.uuid4().hex}", x, y, tenant=DEFAULT_TENANT)
        spec["data"] = {"dataset_id": dataset.id}
        return [repository.insert_job(session, tenant_id=DEFAULT_TENANT, name=f"ingest-{i}", spec=spec, dataset_id=dataset.id,
                                      device="cpu").id for i in range(n)]


def history_writer() -> Callable[[Session, list[dict]], None]:
    """The worker's own history write when it exists, else the bulk insert it is specified as."""
    try:
        from services.db.checkpoints import write_history_chunks
    except ImportError:
        from sqlalchemy import insert

        from services.db.models import HistoryChunk

        def write_history_chunks(session: Session, rows: list[dict]) -> None:
            session.execute(insert(HistoryChunk), [{**r, "ssr": np.asarray(r["ssr"]).tolist()} for r in rows])
    return write_history_chunks


def curves(n_jobs: int, n_steps: int, seed: int = 0) -> np.ndarray:
    """Decreasing, non-round SSR values like a real run (so the text encoding is realistic)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n_steps + 1)
    return 20.0 * np.exp(-steps / rng.uniform(200, 2000, (n_jobs, 1))) + rng.uniform(0, 1e-3, (n_jobs, 1))


def ingest(engine: Engine, job_ids: list[str], values: np.ndarray, first_step: int, row_len: int,
           n_checkpoints: int) -> float:
    """Seconds for ``n_checkpoints`` transactions, each one row of ``row_len`` points per job,
    the way ``services.training`` commits a pack's checkpoint."""
    write = history_writer()
    start = time.perf_counter()
    for k in range(n_checkpoints):
        first = first_step + k * row_len
        rows = [{"job_id": job_id, "first_step": first, "ssr": values[i, first:first + row_len]}
                for i, job_id in enumerate(job_ids)]
        with Session(engine) as session, session.begin():
            write(session, rows)
    return time.perf_counter() - start


def write_step_zero(engine: Engine, job_ids: list[str], values: np.ndarray) -> None:
    """The step-0 chunk ([ssr0]) a worker writes when it starts a job; not timed."""
    rows = [{"job_id": job_id, "first_step": 0, "ssr": values[i, :1]} for i, job_id in enumerate(job_ids)]
    with Session(engine) as session, session.begin():
        history_writer()(session, rows)


def finish_ingest_jobs(engine: Engine, job_ids: list[str], last_step: int) -> None:
    """Mark the seeded jobs finished so no worker of part 2 could ever claim them."""
    with Session(engine) as session, session.begin():
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(status="succeeded", step=last_step))


def ingestion_results(engine: Engine, plan: Plan) -> list[Result]:
    """Rows of each length continue the same jobs' curves, so one curve covers every case."""
    job_ids = seed_jobs(engine, plan.jobs)
    checkpoints = {n: max(1, -(-plan.ingest_points // (plan.jobs * n))) for n in plan.row_lengths}
    last = sum(n * checkpoints[n] for n in plan.row_lengths)
    values = curves(plan.jobs, last)
    write_step_zero(engine, job_ids, values)
    results, first = [], 1
    for row_len in plan.row_lengths:
        log(f"ingesting rows of {row_len} points: {checkpoints[row_len]} checkpoints x {plan.jobs} jobs")
        seconds = ingest(engine, job_ids, values, first, row_len, checkpoints[row_len])
        results.append(ingest_result(row_len, plan.jobs * checkpoints[row_len], seconds))
        first += row_len * checkpoints[row_len]
    finish_ingest_jobs(engine, job_ids, last)
    results.append(read_back(engine, job_ids[len(job_ids) // 2], values[len(job_ids) // 2]))
    return results


def ingest_result(row_len: int, rows: int, seconds: float) -> Result:
    points = rows * row_len
    rate = points / seconds
    return Result("ingestion", f"rows of {row_len} points", rate, "points/s", INGEST_BAR, rate >= INGEST_BAR,
                  {"points": points, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds})


GRAFANA_SQL = text(
    "SELECT first_step + i - 1 AS step, v FROM history_chunks, unnest(ssr) WITH ORDINALITY AS u(v, i) "
    "WHERE job_id = :id ORDER BY 1"
)


def read_back(engine: Engine, job_id: str, expected: np.ndarray) -> Result:
    """A dashboard reads the array rows with plain SQL: the curve must be complete and exact."""
    start = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execute(GRAFANA_SQL, {"id": job_id}).all()
    seconds = time.perf_counter() - start
    steps = np.array([r.step for r in rows], dtype=np.int64)
    ssr = np.array([r.v for r in rows], dtype=np.float64)
    gaps = int(np.sum(np.diff(steps) > 1)) if len(steps) > 1 else 0
    repeats = int(np.sum(np.diff(steps) == 0)) if len(steps) > 1 else 0
    complete = len(steps) == len(expected) and bool(np.array_equal(steps, np.arange(len(expected))))
    exact = complete and bool(np.array_equal(ssr, expected))
    return Result("ingestion", "Grafana read-back of one curve", seconds * 1e3, "ms", None, complete and exact,
                  {"points": len(steps), "expected": len(expected), "gaps": gaps, "repeats": repeats,
                   "first_step": int(steps[0]) if len(steps) else None,
                   "last_step": int(steps[-1]) if len(steps) else None, "values_exact": exact})


# ----------------------------------------------------------------------------- part 2: the stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flush_broker(url: str) -> None:
    """A leftover message of another run would be a job id this database does not have."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@dataclass
class StackHandle:
    url: str
    logs: Path
    stack: Stack


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment (the stack's children inherit it), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def service_stack(database_url: str, broker_url: str) -> Iterator[StackHandle]:
    """The production processes under ``descent up``'s supervisor: the API, the scheduler and two
    workers. Their logs are deleted after a clean run and kept (path on stderr) after a failure."""
    flush_broker(broker_url)
    logs = Path(tempfile.mkdtemp(prefix="descent-bench-"))
    try:
        with environment({"DESCENT_DATABASE_URL": database_url, "DESCENT_BROKER_URL": broker_url}), \
                Stack(logs / "home", port=free_port(), workers=2, log_dir=logs) as stack:
            yield StackHandle(stack.url, logs, stack)
    except BaseException:
        log(f"logs of the stack kept in {logs}")
        raise
    else:
        shutil.rmtree(logs, ignore_errors=True)
    finally:
        flush_broker(broker_url)


def check_alive(handle: StackHandle) -> None:
    handle.stack.check_alive()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def job_spec(seed: int) -> dict:
    """The smallest real job: StatQuest's [1,2,1] on 3 points, 10 steps."""
    return {"name": f"bench-{seed}", "architecture": {"layers": [1, 2, 1], "activation": "softplus"},
            "data": {"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [0.0]]},
            "learning_rate": 0.1, "init": {"seed": seed}, "stop": {"max_steps": 10}}


def submit(client: httpx.Client, seed: int) -> str:
    answer = client.post("/v1/jobs", json=job_spec(seed))
    if answer.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs -> {answer.status_code}: {answer.text[:500]}")
    return answer.json()["id"]


def wait_status(client: httpx.Client, job_id: str, wanted: tuple[str, ...], timeout: float,
                handle: StackHandle) -> dict:
    """Poll GET /v1/jobs/{id} every ~5 ms until the status is one of ``wanted``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in wanted:
            return job
        time.sleep(POLL_S)
    check_alive(handle)
    raise RuntimeError(f"job {job_id} not {wanted} after {timeout:.0f} s\n{log_tail(handle.logs / 'worker0.log')}")


def warm_up(client: httpx.Client, handle: StackHandle) -> None:
    """Two jobs (one per pool process) so imports and connections are not measured."""
    ids = [submit(client, 10_000 + i) for i in range(2)]
    for job_id in ids:
        job = wait_status(client, job_id, FINISHED, 120.0, handle)
        if job["status"] != "succeeded":
            raise RuntimeError(f"warm-up job {job_id} ended {job['status']}: {job.get('error')}")


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class LatencySample:
    seen_s: float  # before POST -> GET shows running or finished
    post_s: float  # the POST round trip alone (validate, insert, commit, publish)
    db_s: float  # started_at - created_at from the job row
    status: str


def one_latency(client: httpx.Client, seed: int, handle: StackHandle) -> LatencySample:
    """Waits for the job to finish too, so the next one meets an idle worker."""
    start = time.perf_counter()
    job_id = submit(client, seed)
    posted = time.perf_counter() - start
    wait_status(client, job_id, ("running", *FINISHED), 60.0, handle)
    seen = time.perf_counter() - start
    job = wait_status(client, job_id, FINISHED, 60.0, handle)
    db = (stamp(job["started_at"]) - stamp(job["created_at"])).total_seconds()
    return LatencySample(seen, posted, db, job["status"])


def latency_results(handle: StackHandle, n: int) -> list[Result]:
    with httpx.Client(base_url=handle.url, timeout=30.0) as client:
        warm_up(client, handle)
        log(f"latency: {n} jobs one at a time")
        samples = [one_latency(client, 20_000 + i, handle) for i in range(n)]
    seen = np.array([s.seen_s for s in samples]) * 1e3
    db = np.array([s.db_s for s in samples]) * 1e3
    post = np.array([s.post_s for s in samples]) * 1e3
    details = {"jobs": n, "not_succeeded": sum(s.status != "succeeded" for s in samples),
               "POST round trip median ms": float(np.median(post))}
    return [
        Result("stack", "submit -> running (HTTP, median)", float(np.median(seen)), "ms", details=details),
        Result("stack", "submit -> running (HTTP, p95)", float(np.percentile(seen, 95)), "ms"),
        Result("stack", "started_at - created_at (median)", float(np.median(db)), "ms"),
        Result("stack", "started_at - created_at (p95)", float(np.percentile(db, 95)), "ms"),
    ]


async def submit_many(url: str, seeds: list[int], concurrency: int) -> tuple[list[str], float, int]:
    """(job ids, seconds from the first POST to the last answer, non-201 answers)."""
    todo = iter(seeds)
    ids: list[str] = []
    failures = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal failures
        for seed in todo:
            answer = await client.post("/v1/jobs", json=job_spec(seed))
            if answer.status_code == 201:
                ids.append(answer.json()["id"])
            else:
                failures += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return ids, time.perf_counter() - start, failures


def wait_all_finished(engine: Engine, ids: list[str], timeout: float, handle: StackHandle) -> None:
    """Read the job rows directly: polling through the API would compete with the work measured."""
    query = text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status = ANY(:done)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query, {"ids": ids, "done": list(FINISHED)}).scalar() == len(ids):
                return
        check_alive(handle)
        time.sleep(0.05)
    raise RuntimeError(f"jobs not all finished after {timeout:.0f} s\n{log_tail(handle.logs / 'worker0.log')}")


def finish_stats(engine: Engine, ids: list[str]) -> dict[str, Any]:
    """Span from the first creation to the last finish, statuses, and the median time a job
    waited (started_at - created_at) and ran (finished_at - started_at) under the burst."""
    query = text(
        "SELECT status, count(*) AS n, min(created_at) AS first_created, max(finished_at) AS last_finished, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)) AS wait, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS run "
        "FROM jobs WHERE id = ANY(:ids) GROUP BY status"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"ids": ids}).all()
    span = max(r.last_finished for r in rows) - min(r.first_created for r in rows)
    ok = [r for r in rows if r.status == "succeeded"]
    return {"statuses": {r.status: r.n for r in rows}, "seconds": span.total_seconds(),
            "median_wait_s": float(ok[0].wait) if ok else None, "median_run_s": float(ok[0].run) if ok else None}


def throughput_results(handle: StackHandle, engine: Engine, plan: Plan) -> list[Result]:
    n = plan.throughput_jobs
    log(f"throughput: {n} jobs from {plan.concurrency} concurrent clients")
    ids, seconds, failures = asyncio.run(submit_many(handle.url, list(range(30_000, 30_000 + n)), plan.concurrency))
    wait_all_finished(engine, ids, plan.finish_timeout_s, handle)
    stats = finish_stats(engine, ids)
    return [
        Result("stack", "submissions per second (POST 201)", len(ids) / seconds, "jobs/s",
               details={"jobs": n, "created": len(ids), "failed_posts": failures, "seconds": seconds,
                        "concurrency": plan.concurrency}),
        Result("stack", "jobs finished per second", len(ids) / stats["seconds"], "jobs/s",
               details={"jobs": len(ids), "seconds_first_created_to_last_finished": stats["seconds"],
                        "statuses": stats["statuses"], "median_wait_s": stats["median_wait_s"],
                        "median_run_s": stats["median_run_s"]}),
    ]


def stack_results(database_url: str, engine: Engine, plan: Plan) -> list[Result]:
    with service_stack(database_url, BROKER_URL) as handle:
        log(f"stack up at {handle.url} (logs {handle.logs})")
        return latency_results(handle, plan.latency_jobs) + throughput_results(handle, engine, plan)


# ----------------------------------------------------------------------------- report


def command_line() -> str:
    """The exact command, so a reader can rerun it (``-m benchmarks.service`` or the file)."""
    spec = globals().get("__spec__")
    target = ["-m", spec.name] if spec is not None and spec.name != "__main__" else [sys.argv[0]]
    if not target[0].startswith("-"):
        target = [os.path.relpath(target[0], ROOT) if Path(target[0]).is_absolute() else target[0]]
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    return shlex.join([python, *target, *sys.argv[1:]])


def format_value(result: Result) -> str:
    if result.unit == "ms":
        return f"{result.value:,.1f} {result.unit}"
    return f"{result.value:,.0f} {result.unit}"


def format_details(result: Result) -> str:
    d = result.details
    if "rows_per_s" in d:
        return f"{d['points']:,} points, {d['rows']:,} rows, {d['seconds']:.2f} s, {d['rows_per_s']:,.0f} rows/s"
    if "gaps" in d:
        return (f"{d['points']:,}/{d['expected']:,} points, steps {d['first_step']}..{d['last_step']}, "
                f"{d['gaps']} gaps, {d['repeats']} repeats, values exact: {d['values_exact']}")
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def format_bar(result: Result) -> str:
    if result.passed is None:
        return ""
    verdict = "PASS" if result.passed else "FAIL"
    return f"  [bar >= {result.bar:,.0f} {result.unit}: {verdict}]" if result.bar else f"  [{verdict}]"


def result_lines(result: Result) -> list[str]:
    head = f"  {result.name:<38} {format_value(result):>20}{format_bar(result)}"
    return [head, f"      {format_details(result)}"] if result.details else [head]


def human_report(results: list[Result], header: list[str]) -> str:
    titles = {"ingestion": "1. History ingestion into PostgreSQL (worker's write, one transaction per checkpoint)",
              "stack": "2. Real stack: API, scheduler and 2 workers (the descent up supervisor), Redis + PostgreSQL"}
    lines = [*header, ""]
    for section, title in titles.items():
        rows = [r for r in results if r.section == section]
        if rows:
            lines.append(title)
            lines += [line for r in rows for line in result_lines(r)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark descent's storage and service stack.")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of the report")
    parser.add_argument("--skip-stack", action="store_true", help="part 1 (ingestion) only")
    return parser.parse_args(argv)


def run(plan: Plan, skip_stack: bool) -> tuple[list[Result], str]:
    with bench_database() as url:
        engine = make_engine(url)
        try:
            version = server_version(engine)
            results = ingestion_results(engine, plan)
            if not skip_stack:
                results += stack_results(url, engine, plan)
        finally:
            engine.dispose()
    return results, version


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when a bar or a check fails (bars are not judged with --quick)."""
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    load = os.getloadavg()[0]
    results, version = run(plan, args.skip_stack)
    if args.quick:  # a smoke run's timings are too short to judge a bar
        results = [replace(r, passed=None) if r.bar is not None else r for r in results]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2, default=str))
    else:
        quick = " (--quick: timings mean nothing)" if args.quick else ""
        header = [f"$ {command_line()}",
                  f"{os.cpu_count()} cores (load average {load:.2f} at start, shared with other processes); "
                  f"PostgreSQL {version}; Redis {BROKER_URL}; {plan.jobs} jobs for ingestion{quick}"]
        print(human_report(results, header))
    return 0 if all(r.passed is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
