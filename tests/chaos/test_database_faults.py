"""PostgreSQL restarted mid-job (fault matrix 7), on a cluster of our own."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.worker.conftest import submit

from .checks import assert_nothing_lost
from .harness import LONG, ChaosStack, chaos_job, eventually, lost_leases, progressed
from .servers import PostgresCluster

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.parametrize("outage", [0, 10])
def test_postgresql_restarted_mid_job(outage: int, pg_cluster: PostgresCluster,
                                      make_stack: Callable[..., ChaosStack], recovery: Callable[..., None]) -> None:
    """7. A fast restart (``pg_ctl stop -m fast`` + start: every session cut) while one job
    trains and two wait, and the same with the server away for 10 s. No job fails because the
    database blinked, and all finish as in a fault-free run. A brief restart is within the
    worker's storage retries (half a lease), so it does not even cost a takeover."""
    stack = make_stack("production", workers=1, database_url=pg_cluster.new_database())
    first = chaos_job(LONG)
    job = stack.running(submit(first).id, min_step=3000)
    documents = {job.id: first} | {submit(d := chaos_job(LONG, seed=seed)).id: d for seed in (1, 2)}
    down = time.monotonic()
    pg_cluster.stop("fast")
    time.sleep(outage)
    pg_cluster.start()
    back = time.monotonic()
    eventually(progressed({job.id: job.step}), 60, "the running job trains again", stack)
    recovery(time.monotonic() - back, f"PostgreSQL away {back - down:.1f} s")
    found = stack.finish(list(documents), timeout=120)
    assert [j.status for j in found] == ["succeeded"] * 3, [(j.id, j.status, j.error) for j in found]
    assert_nothing_lost(documents, stack.lease)
    if outage == 0:
        assert lost_leases(job.id) == 0, f"a {back - down:.1f} s restart cost the running job its lease"
