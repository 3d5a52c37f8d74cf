"""Sweep benchmark: packs through the whole service, against PyTorch's batched compute of the
same trainings, measured in the same run.

Usage (from the repository root; ``make bench-sweeps`` runs the full one)::

    .venv/bin/python benchmarks/sweeps.py                    # embedded stack and PostgreSQL + Redis
    .venv/bin/python benchmarks/sweeps.py --stack embedded   # one stack only
    .venv/bin/python benchmarks/sweeps.py --quick            # smoke run, seconds; timings mean nothing

Figures (issue "Scheduler and sweeps"), each on a running stack with 2 workers (``descent up``'s
supervisor: API, scheduler, workers as subprocesses):

1. The sweep: 1000 StatQuest members (learning rates geomspace(0.005, 0.5, 100) x init seeds
   0-9, all parameters trainable, 1000 steps, checkpoint every 250), from POST to all 1000
   finished with every history point and checkpoint stored. Bar: <= 2x PyTorch.
2. The same 1000 jobs POSTed one by one from 8 client threads, to all finished. Bar: <= 4x.
3. A 10,000-member sweep accepted (POST answered). Bar: <= 2 s.
4. Submit -> running of single jobs (median of 30; each waits for the last to finish).
   Bar: <= 50 ms on the embedded stack.

The reference is PyTorch's batched autograd (``benchmarks/engine.py``'s reference (a)) training
the same 1000 networks from the same initial parameters and learning rates: compute only, best
of 3; figures 1 and 2 are best of 3 as well, every run listed. Completion is read from the
database (polling the API would compete with the work). Figures 1 and 2 also list the CPU
seconds of the stack's API, workers and scheduler during the run (from /proc), and the clients'.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from sqlalchemy import Engine, text

if __package__ in (None, ""):  # run as a file: make `services` and `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import engine as engine_bench  # noqa: E402
from benchmarks.service import bench_database, environment, free_port  # noqa: E402
from services.db.session import make_engine  # noqa: E402
from services.examples import statquest_job  # noqa: E402
from services.stack import Stack, default_api_workers  # noqa: E402

REDIS_URL = os.environ.get("DESCENT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
UNFINISHED = "('queued', 'running')"


@dataclass(frozen=True)
class Plan:
    rates: int = 100
    seeds: int = 10
    steps: int = 1000
    checkpoint_every: int = 250
    big_sweep: int = 10_000
    latency_jobs: int = 30
    clients: int = 8
    repeat: int = 3
    timeout_s: float = 600.0

    @property
    def members(self) -> int:
        return self.rates * self.seeds


QUICK = Plan(rates=10, seeds=2, steps=50, checkpoint_every=25, big_sweep=200, latency_jobs=3, repeat=1, timeout_s=120)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the workload


def base_job(plan: Plan) -> dict:
    job = statquest_job()
    job |= {"name": "sweep-bench", "init": {"seed": 0}, "trainable": None,
            "stop": {"max_steps": plan.steps}, "checkpoint_every": plan.checkpoint_every}
    return job


def rates(plan: Plan) -> list[float]:
    return np.geomspace(0.005, 0.5, plan.rates).tolist()


def sweep_body(plan: Plan, name: str = "lr-scan") -> dict:
    """Member m has learning rate rates[m // seeds] and init seed m % seeds (grid order)."""
    return {"name": name, "base": base_job(plan),
            "grid": {"learning_rate": rates(plan), "init.seed": list(range(plan.seeds))}}


def member_jobs(plan: Plan) -> list[dict]:
    """The sweep's members as independent job bodies, in the same order."""
    return [base_job(plan) | {"name": f"job-{m}", "learning_rate": rates(plan)[m // plan.seeds],
                              "init": {"seed": m % plan.seeds}} for m in range(plan.members)]


def torch_seconds(plan: Plan) -> tuple[float | None, str]:
    """PyTorch batched autograd on the same trainings: best of ``repeat`` (compute only).
    None without torch (the ``bench`` extra): the figures are then shown without ratios."""
    from services.engine import Architecture, init_parameters

    torch = engine_bench.import_torch()
    if torch is None:
        return None, "torch not installed: no ratios (`make bench` installs the bench extra)"
    w = replace(engine_bench.FULL["W2"], members=plan.members, steps=plan.steps)
    arch = Architecture((1, 2, 1), "softplus")
    inits = [init_parameters(arch, m % plan.seeds) for m in range(plan.members)]
    params = {k: np.stack([p[k] for p in inits]) for k in inits[0]}
    lrs = np.repeat(np.asarray(rates(plan)), plan.seeds)
    once, _ = engine_bench.prepare_torch_autograd(torch, w, "float64", params=params, rates=lrs)
    seconds, _ = engine_bench.best_of(once, plan.repeat)
    return seconds, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------- stacks


@contextmanager
def running_stack(kind: str, workers: int = 2, settings: dict[str, str] | None = None) -> Iterator[tuple[Stack, Engine]]:
    """``descent up``'s supervisor with ``workers`` workers and its API processes, on SQLite +
    files or PostgreSQL + Redis; ``settings``: more DESCENT_* variables for the stack."""
    home = Path(tempfile.mkdtemp(prefix=f"descent-bench-{kind}-"))
    with (bench_database() if kind == "postgres" else _nothing()) as pg_url:
        env = (settings or {}) | {"DESCENT_DATABASE_URL": pg_url or f"sqlite:///{home / 'descent.db'}",
                                  "DESCENT_BROKER_URL": REDIS_URL if pg_url else "filesystem://"}
        if pg_url:
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
        with environment(env), Stack(home, port=free_port(), workers=workers, api_workers=default_api_workers(),
                                     log_dir=home / "logs") as stack:
            engine = make_engine(env["DESCENT_DATABASE_URL"])
            try:
                yield stack, engine
            finally:
                engine.dispose()


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def unfinished(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM jobs WHERE status IN {UNFINISHED}")).scalar())


def wait_all_finished(stack: Stack, engine: Engine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while unfinished(engine):
        stack.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs unfinished after {timeout:.0f} s; logs in {stack.log_dir}")
        time.sleep(0.01)


def stored_counts(engine: Engine, plan: Plan) -> dict[str, int]:
    """History points and checkpoints stored, and what a complete run must have stored."""
    with engine.connect() as conn:
        steps = conn.execute(text("SELECT coalesce(sum(step + 1), 0), count(*) FROM jobs")).one()
        checkpoints = conn.execute(text("SELECT count(*) FROM checkpoints")).scalar()
        last = conn.execute(text("SELECT count(*) FROM checkpoints c JOIN jobs j ON j.id = c.job_id "
                                 "AND j.step = c.step")).scalar()
        points = conn.execute(text("SELECT ssr FROM history_chunks")).scalars()
        stored_points = sum(len(p) // 8 if isinstance(p, (bytes, memoryview)) else len(p) for p in points)
    return {"history points": stored_points, "expected points": int(steps[0]), "jobs": int(steps[1]),
            "checkpoints": int(checkpoints), "final checkpoints": int(last)}


def clear(engine: Engine) -> None:
    """Empty the tables between measures (retried: a worker's last heartbeat may still touch a row)."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(5):
        try:
            with engine.begin() as conn:
                for table in ("history_chunks", "checkpoints", "jobs", "sweeps"):
                    conn.execute(text(f"DELETE FROM {table}"))
            return
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.5)


# ----------------------------------------------------------------------------- measures


def warm_up(stack: Stack, engine: Engine, plan: Plan) -> None:
    """One small sweep so worker imports and connections are not measured."""
    small = replace(plan, rates=4, seeds=2, steps=20, checkpoint_every=10)
    httpx.post(f"{stack.url}/v1/sweeps", json=sweep_body(small, "warm-up"), timeout=60).raise_for_status()
    wait_all_finished(stack, engine, 120)
    clear(engine)


def measure_sweep(stack: Stack, engine: Engine, plan: Plan) -> tuple[float, dict]:
    start, cpu = time.perf_counter(), stack_cpu()
    httpx.post(f"{stack.url}/v1/sweeps", json=sweep_body(plan), timeout=60).raise_for_status()
    wait_all_finished(stack, engine, plan.timeout_s)
    seconds = time.perf_counter() - start
    counts = stored_counts(engine, plan) | cpu_used(cpu)
    clear(engine)
    return seconds, counts


ROLES = ("api", "worker", "scheduler")


def stack_cpu() -> dict[str, float]:
    """CPU seconds so far of the stack's processes by role (``descent api``, ``worker``,
    ``scheduler``: each child of this process with its descendants), read from /proc (Linux;
    empty elsewhere). Where the cores go is what decides a burst on 2 of them."""
    proc, tick = Path("/proc"), os.sysconf("SC_CLK_TCK")
    parents, cpu, roles = {}, {}, {}
    for entry in proc.glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        pid = int(entry.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        if parents[pid] == os.getpid():
            roles[pid] = next((r for r in ROLES if f" {r}" in command), None)
    totals = dict.fromkeys(ROLES, 0.0)
    for pid, seconds in cpu.items():
        top = pid
        while parents.get(top) not in (os.getpid(), None, 0, 1):
            top = parents[top]
        if parents.get(top) == os.getpid() and roles.get(top):
            totals[roles[top]] += seconds
    return totals


def cpu_used(before: dict[str, float]) -> dict[str, float]:
    """CPU seconds by role since ``before`` (``stack_cpu()``), rounded for the report."""
    return {f"CPU s {role}": round(seconds - before.get(role, 0.0), 2) for role, seconds in stack_cpu().items()}


def post_json(url: str) -> Callable[[bytes], None]:
    """A keep-alive connection that POSTs encoded job bodies to ``/v1/jobs`` (raises on non-201).

    The clients are the standard library's ``http.client``, not httpx: they share the 2 cores
    with the stack, and httpx's own work per request (about 1 ms of CPU here, three times this
    client's) would be measured as the service's. Real clients run on their own machines."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def post(body: bytes) -> None:
        connection.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        text = answer.read()
        if answer.status != 201:
            raise RuntimeError(f"POST /v1/jobs answered {answer.status}: {text[:200]!r}")

    return post


def measure_posts(stack: Stack, engine: Engine, plan: Plan) -> tuple[float, dict]:
    bodies = [json.dumps(body).encode() for body in member_jobs(plan)]
    chunks = [bodies[i::plan.clients] for i in range(plan.clients)]
    latencies: list[float] = []

    def client(part: list[bytes]) -> None:
        post = post_json(stack.url)
        for body in part:
            t0 = time.perf_counter()
            post(body)
            latencies.append(time.perf_counter() - t0)

    start, cpu, stack_before = time.perf_counter(), time.process_time(), stack_cpu()
    with ThreadPoolExecutor(plan.clients) as pool:
        list(pool.map(client, chunks))
    posted, client_cpu = time.perf_counter() - start, time.process_time() - cpu
    wait_all_finished(stack, engine, plan.timeout_s)
    seconds = time.perf_counter() - start
    counts = stored_counts(engine, plan) | {"all POSTs answered s": round(posted, 3),
                                            "POST p50 ms": round(1e3 * float(np.median(latencies)), 1),
                                            "clients' CPU s": round(client_cpu, 2)} | cpu_used(stack_before)
    clear(engine)
    return seconds, counts


def measure_big_sweep(stack: Stack, engine: Engine, plan: Plan) -> float:
    body = sweep_body(replace(plan, rates=plan.big_sweep // 10, seeds=10), "big")
    start = time.perf_counter()
    answer = httpx.post(f"{stack.url}/v1/sweeps", json=body, timeout=60)
    seconds = time.perf_counter() - start
    answer.raise_for_status()
    assert answer.json()["members"] == plan.big_sweep
    cancel = httpx.post(f"{stack.url}/v1/sweeps/{answer.json()['id']}/cancel", timeout=60)
    if cancel.status_code != 409:  # 409: a small sweep (--quick) may have finished already
        cancel.raise_for_status()
    wait_all_finished(stack, engine, plan.timeout_s)
    clear(engine)
    return seconds


def measure_latency(stack: Stack, engine: Engine, plan: Plan) -> float:
    """Median ms from before POST to the job seen running (or finished) in the database.

    Submits are spaced by random pauses: idle workers poll the embedded broker every
    ``broker_polling_interval`` from the moment their last task ended, and a fixed pause that is
    a multiple of it would land every submit at the same point of the poll cycle."""
    samples, pauses = [], np.random.default_rng(0).uniform(0.2, 0.3, plan.latency_jobs)
    with httpx.Client(base_url=stack.url, timeout=30) as http, engine.connect() as conn:
        for i in range(plan.latency_jobs):
            time.sleep(pauses[i])
            body = statquest_job() | {"name": f"latency-{i}"}
            start = time.perf_counter()
            job_id = http.post("/v1/jobs", json=body).json()["id"]
            while _status(conn, job_id) == "queued":
                time.sleep(0.001)
            samples.append(time.perf_counter() - start)
            wait_all_finished(stack, engine, 60)
    clear(engine)
    return 1e3 * float(np.median(samples))


def _status(conn, job_id: str) -> str:  # noqa: ANN001 (a SQLAlchemy Connection)
    """The job's status in a transaction of its own. (Until the eleventh session the read that
    found a job started was never committed: the next job's first read then ran in that old
    snapshot, found no row, and the figure was the POST's time alone, 4-5 ms.)"""
    try:
        status = conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    finally:
        conn.commit()
    if status is None:
        raise RuntimeError(f"job {job_id} is not in the database")
    return status


# ----------------------------------------------------------------------------- report


def cpu_text() -> str:
    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, {i.get('num_threads')} threads)"
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        blas = ["threadpoolctl missing"]
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown cpu")
    return f"{model}; {os.cpu_count()} cores; BLAS {', '.join(blas)}; load {os.getloadavg()[0]:.2f}"


def best(measure, stack: Stack, engine: Engine, plan: Plan) -> tuple[float, dict]:  # noqa: ANN001
    """Best of ``repeat`` runs, like the reference (the least disturbed one); all runs listed."""
    runs = [measure(stack, engine, plan) for _ in range(plan.repeat)]
    seconds, counts = min(runs, key=lambda run: run[0])
    return seconds, counts | {"runs s": [round(run[0], 2) for run in runs]}


def stack_rows(kind: str, plan: Plan, reference: float | None) -> list[dict]:
    log(f"[{kind}] starting the stack")
    with running_stack(kind) as (stack, engine):
        warm_up(stack, engine, plan)
        log(f"[{kind}] sweep of {plan.members}, best of {plan.repeat}")
        sweep_s, sweep_counts = best(measure_sweep, stack, engine, plan)
        log(f"[{kind}] {plan.members} POSTs from {plan.clients} threads, best of {plan.repeat}")
        posts_s, posts_counts = best(measure_posts, stack, engine, plan)
        log(f"[{kind}] {plan.big_sweep}-member sweep")
        big_s = measure_big_sweep(stack, engine, plan)
        log(f"[{kind}] submit -> running")
        latency_ms = measure_latency(stack, engine, plan)
    ratio = (lambda s: s / reference) if reference else (lambda s: None)
    # The bars are the embedded stack's; PostgreSQL + Redis is reported beside them.
    bar = (lambda value: value) if kind == "embedded" else (lambda value: None)
    return [
        row(kind, f"sweep of {plan.members}, POST to all stored", sweep_s, "s", ratio(sweep_s), bar(2.0), sweep_counts),
        row(kind, f"{plan.members} POSTs from {plan.clients} threads", posts_s, "s", ratio(posts_s), bar(4.0), posts_counts),
        row(kind, f"{plan.big_sweep}-member sweep accepted", big_s, "s", big_s, bar(2.0), {}),
        row(kind, "submit -> running, median", latency_ms, "ms", latency_ms, bar(50.0), {}),
    ]


def row(stack: str, name: str, value: float, unit: str, measured: float | None, bar: float | None,
        details: dict) -> dict:
    """``measured`` is what the bar applies to: a ratio against torch, or the value itself."""
    passed = None if bar is None or measured is None else measured <= bar
    return {"stack": stack, "name": name, "value": value, "unit": unit, "vs_bar": measured, "bar": bar,
            "passed": passed, "details": details}


def render(rows: list[dict], reference: float | None, torch_text: str, plan: Plan) -> str:
    lines = [f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}", f"cpu: {cpu_text()}",
             f"reference: PyTorch batched autograd of the same {plan.members} trainings: "
             + (f"{reference:.3f} s" if reference else "-") + f" ({torch_text})"]
    for r in rows:
        value = f"{r['value']:.2f} {r['unit']}"
        against = f" = {r['vs_bar']:.2f}x torch" if r["vs_bar"] is not None and r["name"].startswith(("sweep", f"{plan.members} POSTs")) else ""
        verdict = ("(reported, no bar)" if r["bar"] is None else
                   f"<= {r['bar']:g}{'x' if against else ' ' + r['unit']}: {'PASS' if r['passed'] else 'FAIL'}")
        lines.append(f"  [{r['stack']:8}] {r['name']:42} {value + against:30} {verdict} {r['details'] or ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--stack", choices=("embedded", "postgres", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    log(f"cpu: {cpu_text()}")
    reference, torch_text = torch_seconds(plan)
    log(f"PyTorch: {reference} s ({torch_text})")
    kinds = ("embedded", "postgres") if args.stack == "both" else (args.stack,)
    rows = [r for kind in kinds for r in stack_rows(kind, plan, reference)]
    if args.json:
        print(json.dumps(rows))
    else:
        print(render(rows, reference, torch_text, plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
