"""The scheduler killed (fault matrix 10)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from services.db.models import SchedulerLease
from services.db.session import session_scope
from tests.worker.conftest import submit

from .checks import assert_nothing_lost
from .harness import LONG, ChaosStack, chaos_job, eventually, progressed

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def leader_pid() -> int | None:
    with session_scope() as session:
        holder = session.scalar(select(SchedulerLease.holder))
    return None if holder is None else int(holder.split(":")[1])


def test_the_leader_scheduler_and_a_worker_child_killed_together(
        kind: str, make_stack: Callable[..., ChaosStack], recovery: Callable[..., None]) -> None:
    """10. SIGKILL of the leading scheduler at the moment a worker child dies: the standby
    scheduler takes the lease over, requeues the lapsed job and dispatches it and the queued
    ones; everything finishes as in a fault-free run."""
    stack = make_stack(kind, workers=1, schedulers=2)
    first = chaos_job(LONG)
    job = stack.running(submit(first).id, min_step=3000)
    documents = {job.id: first} | {submit(d := chaos_job(LONG, seed=seed)).id: d for seed in (1, 2)}
    leader = eventually(leader_pid, 10, "a scheduler leads", stack)
    (killed,) = [p for p in stack.schedulers if p.pid == leader]
    stack.signal_group(killed, signal.SIGKILL)
    os.kill(job.worker.pid, signal.SIGKILL)
    started = time.monotonic()
    killed.wait(timeout=10)
    eventually(lambda: leader_pid() not in (None, leader), float(stack.env["DESCENT_SCHEDULER_LEASE_SECONDS"]) + 5,
               "the standby scheduler takes the lease over", stack)
    eventually(progressed({job.id: job.step}), stack.lease + 25, "the lapsed job trains again", stack)
    recovery(time.monotonic() - started, f"lease {stack.lease:g} s, scheduler lease "
                                         f"{stack.env['DESCENT_SCHEDULER_LEASE_SECONDS']} s")
    stack.finish(list(documents))
    assert_nothing_lost(documents, stack.lease)
