"""Service tests against a REAL Celery worker process, on both deployments:

- ``filesystem-sqlite``: the embedded stack (filesystem broker folder + SQLite file);
- ``redis-postgres``: Redis as broker and PostgreSQL as database.

Jobs go in through the use case (``services.jobs.submit_job`` stores them; the scheduler process
packs and publishes them) and are observed only through the database, as a client would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from sqlalchemy import select

from services import engine, jobs, queue
from services.db.models import SchedulerLease
from services.db.session import session_scope
from services.examples import STATQUEST_B3, STATQUEST_SSR0, STATQUEST_UPDATES, STATQUEST_WEIGHTS, statquest_job, statquest_named

from .conftest import (
    Stack, start_scheduler, assert_contiguous, checkpoint_attempts, checkpoint_steps, final_parameters, history_rows,
    parent_pid, running_stack, seed_job, start_worker, submit, wait_for,
)

pytestmark = pytest.mark.slow
REDIS_SERVER = os.environ.get("DESCENT_TEST_REDIS_URL", "redis://127.0.0.1:6379")
LEASE_SECONDS = 5
REDISPATCH_SECONDS = 2


def free_redis_url() -> str:
    """A database number nobody uses now (no keys, no client on it): other test runs and
    benchmarks on this server run workers on the same queue names, which would steal our tasks."""
    try:
        server = redis.Redis.from_url(REDIS_SERVER, socket_connect_timeout=1)
        busy = {int(client["db"]) for client in server.client_list()}
        for db in range(15, 0, -1):
            if db not in busy and redis.Redis.from_url(f"{REDIS_SERVER}/{db}").dbsize() == 0:
                return f"{REDIS_SERVER}/{db}"
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_SERVER}: {exc}")
    pytest.skip("no free Redis database")


@pytest.fixture(scope="module", params=["filesystem-sqlite", "redis-postgres"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(request.param)
    env = {"DESCENT_HOME": str(home), "DESCENT_LEASE_SECONDS": str(LEASE_SECONDS),
           "DESCENT_HEARTBEAT_SECONDS": "0.5", "DESCENT_ENGINE_BACKEND": "numpy",
           "DESCENT_REDISPATCH_SECONDS": str(REDISPATCH_SECONDS), "DESCENT_SCHEDULER_LEASE_SECONDS": "2",
           "DESCENT_MAX_CHECKPOINT_EVERY": "100000000", "DESCENT_MAX_STEPS": "100000000",
           "DESCENT_TENANT_MAX_COST": "1e15"}  # long chunks of one small job on purpose
    if request.param == "filesystem-sqlite":
        from services.db.migrate import upgrade

        env |= {"DESCENT_DATABASE_URL": f"sqlite:///{home / 'descent.db'}", "DESCENT_BROKER_URL": "filesystem://"}
        upgrade(env["DESCENT_DATABASE_URL"])
    else:
        env |= {"DESCENT_DATABASE_URL": request.getfixturevalue("pg_url"), "DESCENT_BROKER_URL": free_redis_url()}
    with running_stack(env, home / "worker.log") as running:
        yield running
    if request.param == "redis-postgres":
        redis.Redis.from_url(env["DESCENT_BROKER_URL"]).flushdb()  # our leftovers only


def test_statquest_job_trains_b3_in_the_worker_child(stack: Stack) -> None:
    job = wait_for(submit(statquest_job()).id, stack)
    assert (job.status, job.stop_reason, job.step) == ("succeeded", "min_step_size", STATQUEST_UPDATES)
    named = statquest_named([layer.model_dump() for layer in jobs.get_parameters(job.id).layers])
    assert round(named["b3"], 2) == STATQUEST_B3
    assert {k: named[k] for k in STATQUEST_WEIGHTS} == STATQUEST_WEIGHTS
    assert (named["b1"], named["b2"]) == (-1.43, 0.57)
    history = jobs.get_history(job.id)
    assert history.steps == list(range(STATQUEST_UPDATES + 1))
    assert round(history.ssr[0], 2) == STATQUEST_SSR0
    assert job.worker.pid not in (os.getpid(), stack.process.pid)
    assert parent_pid(job.worker.pid) == stack.process.pid  # the prefork child, not the main process
    assert job.worker.hostname and job.attempts == 1


def test_checkpoint_every_chunk_and_at_the_end(stack: Stack) -> None:
    """Every checkpoint is stored; chunks this fast are committed together (one history row)."""
    job = wait_for(submit(seed_job(max_steps=35, checkpoint_every=10)).id, stack)
    assert (job.status, job.stop_reason, job.step) == ("succeeded", "max_steps", 35)
    assert checkpoint_steps(job.id) == [0, 10, 20, 30, 35]
    assert history_rows(job.id) == [(0, 36)]
    assert len(jobs.get_history(job.id).steps) == 36


def test_cancel_a_running_job_stops_it_at_a_checkpoint(stack: Stack) -> None:
    # 2000 points, so the million steps take far longer than the commit period: on 3 points a
    # fast machine trained them all before the commit that honours the cancel. The SSR sums
    # over every point: a smaller rate keeps it from diverging.
    x = [[i / 1999] for i in range(2000)]
    data = {"x": x, "y": [[4 * v * (1 - v)] for (v,) in x]}
    job = submit(seed_job(max_steps=1_000_000, checkpoint_every=500, data=data, learning_rate=1e-4))
    wait_for(job.id, stack, done=lambda j: j.status == "running" and j.step >= 500)
    jobs.cancel_job(job.id)
    done = wait_for(job.id, stack)
    assert (done.status, done.stop_reason) == ("cancelled", None)
    steps = checkpoint_steps(job.id)
    assert steps[-1] == done.step and done.step % 500 == 0 and done.step < 1_000_000
    assert_contiguous(job.id, done.step)


def test_a_duplicate_delivery_changes_nothing(stack: Stack) -> None:
    job = wait_for(submit(seed_job(max_steps=35, checkpoint_every=10)).id, stack)
    before = (jobs.get_job(job.id), checkpoint_attempts(job.id), history_rows(job.id))
    queue.publish_pack([job.id], "cpu")
    # One child with prefetch 1 runs messages in order: once the sentinel ran, so did the duplicate.
    wait_for(submit(statquest_job()).id, stack)
    after = (jobs.get_job(job.id), checkpoint_attempts(job.id), history_rows(job.id))
    assert after == before


def test_a_killed_worker_child_is_resumed_from_its_checkpoint(stack: Stack) -> None:
    """SIGKILL mid-job; once the lease lapses the scheduler requeues it and a worker resumes it:
    no gap, no repeated step, and the same bits as an uninterrupted run."""
    steps = steps_lasting(4.0)  # long enough to be caught running after its first commits (~1 s apart)
    document = seed_job(max_steps=steps, checkpoint_every=500)
    running = wait_for(submit(document).id, stack, done=lambda j: j.status == "running" and j.step >= 2000)
    os.kill(running.worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    expected = uninterrupted_parameters(document)
    job = wait_for(running.id, stack, timeout=60)
    assert time.monotonic() - killed < LEASE_SECONDS + 20
    assert (job.status, job.step) == ("succeeded", steps)
    assert job.attempts >= 2 and job.worker.pid != running.worker.pid
    attempts = checkpoint_attempts(job.id)
    assert attempts[0] == 1 and attempts[steps] == job.attempts
    assert_contiguous(job.id, steps)
    stored = final_parameters(job.id)
    for name, value in expected.items():
        assert np.array_equal(stored[f"parameters/{name}"], value), name


def steps_lasting(seconds: float) -> int:
    """Updates of ``seed_job``'s network that take about ``seconds`` here, measured with the
    engine itself, so the timing tests below keep their meaning however fast the engine gets."""
    sample = 20_000
    document = seed_job(max_steps=sample, checkpoint_every=sample)
    times = []
    for _ in range(3):  # the fastest run: the first pays for compiling, others may share the CPU
        started = time.perf_counter()
        uninterrupted_parameters(document)
        times.append(time.perf_counter() - started)
    rate = sample / min(times)
    return int(rate * seconds) // 1000 * 1000 + 1000


def test_a_long_chunk_keeps_its_lease_through_the_heartbeat(stack: Stack) -> None:
    """A chunk far longer than the lease: the heartbeat thread renews it, nobody takes over."""
    steps = steps_lasting(2.5 * LEASE_SECONDS)
    document = seed_job(max_steps=steps, checkpoint_every=steps)
    job = wait_for(submit(document).id, stack, timeout=120)
    assert (job.finished_at - job.started_at).total_seconds() > LEASE_SECONDS  # the test means something
    assert (job.status, job.step, job.attempts) == ("succeeded", steps, 1)
    assert checkpoint_steps(job.id) == [0, steps]


def uninterrupted_parameters(document: dict) -> dict[str, np.ndarray]:
    """The same job trained by the engine in one go, in this process."""
    arch = engine.Architecture(tuple(document["architecture"]["layers"]), document["architecture"]["activation"])
    config = engine.PackConfig.single(document["learning_rate"], max_steps=document["stop"]["max_steps"])
    start = {k: v[None] for k, v in engine.init_parameters(arch, document["init"]["seed"]).items()}
    x, y = np.array(document["data"]["x"]), np.array(document["data"]["y"])
    state = engine.init_state(np, arch, config, start, x, y)
    state, _ = engine.train(np, arch, config, state, x, y, document["stop"]["max_steps"])
    return {name: np.asarray(value[0]) for name, value in state.parameters.items()}


def flush_broker(stack: Stack) -> None:
    url = stack.env["DESCENT_BROKER_URL"]
    if url.startswith("redis"):
        redis.Redis.from_url(url).flushdb()
    else:
        for path in (Path(stack.env["DESCENT_HOME"]) / "broker" / "queue").glob("*.msg"):
            path.unlink()


def test_a_flushed_broker_loses_no_job(stack: Stack) -> None:
    """Messages of queued jobs vanish while another job runs: the database still says they have
    to run, and the scheduler publishes them again."""
    running = wait_for(submit(seed_job(max_steps=40_000, checkpoint_every=5000)).id, stack,
                       done=lambda j: j.status == "running")
    queued = [submit(seed_job(max_steps=50, learning_rate=0.01 * (i + 1))).id for i in range(3)]
    time.sleep(0.3)  # dispatched into the broker, behind the running job
    flush_broker(stack)
    for job_id in [running.id, *queued]:
        job = wait_for(job_id, stack, timeout=60)
        assert job.status == "succeeded", job
        assert_contiguous(job_id, job.step)


def scheduler_pids(stack: Stack) -> dict[int, subprocess.Popen]:
    return {p.pid: p for p in (stack.scheduler, *stack.extra) if p is not None and p.poll() is None}


def test_a_killed_scheduler_is_replaced_by_another(stack: Stack, tmp_path: Path) -> None:
    second = start_scheduler(stack.env, tmp_path / "scheduler2.log")
    stack.extra.append(second)
    wait_for(submit(statquest_job()).id, stack)
    with session_scope() as session:
        holder = session.scalar(select(SchedulerLease.holder))
    leader_pid = int(holder.split(":")[1])
    processes = scheduler_pids(stack)
    assert leader_pid in processes and len(processes) == 2
    os.killpg(leader_pid, signal.SIGKILL)
    processes[leader_pid].wait()
    killed = time.monotonic()
    job = wait_for(submit(statquest_job()).id, stack, timeout=30)
    assert job.status == "succeeded" and time.monotonic() - killed < 2 + 10
    with session_scope() as session:
        assert int(session.scalar(select(SchedulerLease.holder)).split(":")[1]) != leader_pid


def test_sigterm_checkpoints_and_releases_within_seconds(stack: Stack) -> None:
    """SIGTERM to the worker mid-chunk: its child checkpoints where it is, gives the job back
    and the worker exits, without waiting for the chunk or the lease; a new worker resumes the
    job to the same bits as an uninterrupted run. (Runs last: it replaces the module's worker.)"""
    steps = steps_lasting(6.0)
    document = seed_job(max_steps=steps, checkpoint_every=steps)
    running = wait_for(submit(document).id, stack, done=lambda j: j.status == "running")
    time.sleep(1.5)
    os.kill(stack.process.pid, signal.SIGTERM)
    stopped = time.monotonic()
    stack.process.wait(timeout=15)
    released = jobs.get_job(running.id)
    assert time.monotonic() - stopped < 5, "the worker took too long to stop"
    assert released.status == "queued" and 0 < released.step < steps, released
    assert checkpoint_steps(running.id) == [0, released.step]
    stack.process = start_worker(stack.env, stack.log.with_name("worker2.log"))
    stack.log = stack.log.with_name("worker2.log")
    job = wait_for(running.id, stack, timeout=60)
    assert (job.status, job.step, job.attempts) == ("succeeded", steps, 2)
    assert checkpoint_attempts(job.id) == {0: 1, released.step: 1, steps: 2}
    assert_contiguous(job.id, steps)
    stored = final_parameters(job.id)
    for name, value in uninterrupted_parameters(document).items():
        assert np.array_equal(stored[f"parameters/{name}"], value), name
