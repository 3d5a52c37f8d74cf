"""The broker restarted, killed, flushed (Redis) or fed garbage (the embedded folder): fault
matrix 6 and 11. The database is the truth; the broker only rings the doorbell."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.config import Settings
from services.jobs import get_job
from services.doorbell import QUEUE as DOORBELL
from services.queue import TRAIN_PACK, make_celery
from tests.worker.conftest import submit

from .checks import assert_nothing_lost
from .harness import LONG, ChaosStack, chaos_job, eventually
from .servers import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
OUTAGE_SECONDS = 4


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this case's own, to restart, kill and flush."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.mark.parametrize("fault", ["restart", "kill", "flush"])
def test_redis_restarted_killed_or_flushed(fault: str, redis: RedisServer, make_stack: Callable[..., ChaosStack],
                                           recovery: Callable[..., None]) -> None:
    """6. Our own Redis (no persistence: a restart loses every message, like a flush) goes away
    while one job runs and two wait. ``kill``: down for a few seconds, during which the running
    job ends (its ack has nowhere to go) and a job submitted through the API is still accepted
    (201: the API only writes rows). Afterwards the worker consumes again and every job,
    including one submitted after the fault, finishes as in a fault-free run."""
    stack = make_stack("production", workers=1, redis=redis)
    api_url = stack.add_api()[1] if fault == "kill" else None
    first = chaos_job(LONG)
    job = stack.running(submit(first).id, min_step=3000)
    documents = {job.id: first} | {submit(d := chaos_job(LONG, seed=seed)).id: d for seed in (1, 2)}
    fault_at = time.monotonic()
    if fault == "restart":
        redis.restart()
    elif fault == "flush":
        redis.flush()
    else:
        redis.kill(signal.SIGKILL)
        down = chaos_job(LONG, seed=3)
        answer = httpx.post(f"{api_url}/v1/jobs", json=down, timeout=10)
        assert answer.status_code == 201, answer.text
        documents[answer.json()["id"]] = down
        time.sleep(OUTAGE_SECONDS)
        redis.start()
    back = time.monotonic()
    waiting = [i for i in documents if i != job.id]
    eventually(lambda: any(get_job(i).status != "queued" for i in waiting), 60,
               "the worker takes work from the broker again", stack)
    recovery(time.monotonic() - back, f"Redis {fault}, {back - fault_at:.1f} s down; until a waiting job starts")
    later = submit(d := chaos_job(LONG, seed=4)).id
    documents[later] = d
    stack.finish(list(documents), timeout=120)
    assert_nothing_lost(documents, stack.lease)
    assert all(p.poll() is None for p in [*stack.workers, *stack.schedulers, *stack.apis])


def envelope(folder: Path, args: list) -> dict:
    """A real message of the embedded broker, as a scratch Celery app writes it."""
    app = make_celery(Settings(home=folder, broker_url="filesystem://", database_url="sqlite://"))
    try:
        app.send_task(TRAIN_PACK, args=args, queue="cpu")
    finally:
        app.close()
    (path,) = (folder / "broker" / "queue").glob("*.cpu.msg")
    return json.loads(path.read_text())


def garbage(folder: Path) -> dict[str, bytes]:
    """File name -> content: torn, foreign and malformed messages for the workers' queue and the
    scheduler's doorbell. The names sort before any real message (whose names start with a
    millisecond clock), so each is read before the work behind it."""
    real = envelope(folder / "scratch", [["no-such-job"]])
    text = json.dumps(real)
    body = dict(real, body=base64.b64encode(b"\xff\x00 not json").decode())
    unknown = dict(real, headers=dict(real["headers"], task="descent.no_such_task"))
    wrong = dict(real, body=base64.b64encode(json.dumps([[42], {}, {}]).encode()).decode())
    bare = {k: v for k, v in real.items() if k not in ("headers", "properties")}
    files = {
        "empty": b"", "torn": text[: len(text) // 2].encode(), "binary": b"\x80\xff\xfe garbage \x00",
        "foreign": b'{"hello": "world"}', "list": b"[1, 2, 3]", "string": b'"message"', "null": b"null",
        "bad-body": json.dumps(body).encode(), "unknown-task": json.dumps(unknown).encode(),
        "wrong-args": json.dumps(wrong).encode(), "no-headers": json.dumps(bare).encode(),
    }
    named = {f"0000_{name}.cpu.msg": content for name, content in files.items()}
    named |= {f"0000_{name}.{DOORBELL}.msg": files[name] for name in ("empty", "torn", "foreign", "null")}
    return named


def test_garbage_in_the_embedded_broker_folder(make_stack: Callable[..., ChaosStack], tmp_path: Path) -> None:
    """11. Half-written, foreign and malformed files dropped one by one into the queue folder,
    for the workers and for the scheduler's doorbell (and a writer's leftover ``.part``): each is
    read and skipped, the worker and the scheduler survive and keep consuming, and the jobs
    submitted afterwards finish as in a fault-free run. A worker killed by a file is noted and
    replaced, so one run names every file that kills."""
    stack = make_stack("embedded", workers=1)
    folder = stack.home / "broker" / "queue"
    (folder / ".0000_partial.cpu.msg.part").write_bytes(b'{"body": "')  # a writer that died before its rename
    fatal = []

    def crashed() -> list[tuple[subprocess.Popen, str]]:
        """Our live processes that logged an unrecoverable error (Celery then exits)."""
        found = []
        for proc in [*stack.workers, *stack.schedulers]:
            if proc.pid not in stack.faulted:
                lines = [line for line in stack.logs[proc.pid].read_text().splitlines() if "Unrecoverable" in line]
                found += [(proc, lines[-1].split("] ", 1)[-1])] if lines else []
        return found

    for name, content in garbage(tmp_path).items():
        (folder / name).write_bytes(content)
        eventually(lambda: not (folder / name).exists(), 30, f"{name} is read", stack)
        time.sleep(0.3)  # what reading it did is logged by now
        for proc, line in crashed():
            fatal.append(f"{name}: {line}")
            stack.faulted.add(proc.pid)
            proc.wait(timeout=30)
            stack.add_worker() if proc in stack.workers else stack.add_scheduler()
    documents = {submit(d := chaos_job(LONG, seed=seed)).id: d for seed in (0, 1, 2)}
    stack.finish(list(documents), timeout=120)
    assert_nothing_lost(documents, stack.lease)
    assert fatal == [], "\n".join(fatal)
