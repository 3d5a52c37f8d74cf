"""One tenant's backlog never hides another tenant's jobs from the scheduler.

The scheduler reads at most ``scheduler_batch`` of a queue's oldest jobs per pass. A tenant at
``tenant_max_running`` is left out of that read, and a tenant whose room runs out within it is
left out of one more, so the jobs of other tenants behind a backlog of a whole batch are
dispatched in the same pass, on SQLite and PostgreSQL. Free workers are shared among tenants:
a worker that comes free goes to the tenant with the fewest packs at work, not back to the
tenant with the oldest backlog."""

from __future__ import annotations

from sqlalchemy import update

from services import jobs, scheduler
from services.db import scheduling as store
from services.db.models import Job
from services.db.session import session_scope
from services.spec import JobCreate
from tests.worker.conftest import seed_job


def submit_as(tenant: str) -> str:
    return jobs.submit_job(JobCreate.model_validate(seed_job()), tenant=tenant).id


def limits(settings, running: int, batch: int) -> None:  # noqa: ANN001
    settings.tenant_max_running = running
    settings.scheduler_batch = batch
    settings.pack_linger_seconds = 0  # tiny jobs are sent at once: only the tenant limit is under test


def passes(n: int) -> list[list[str]]:
    """The packs ``n`` passes send (no live worker: every pack planned is sent)."""
    sent: list[list[str]] = []
    for _ in range(n):
        scheduler.run_pass("s", publish=lambda ids, device: sent.append(ids))
    return sent


def test_a_tenant_at_its_limit_with_a_batch_of_backlog_does_not_hide_another_tenant(configured) -> None:  # noqa: ANN001
    limits(configured, running=1, batch=2)
    first = submit_as("a")
    assert passes(1) == [[first]]  # tenant a is at its limit now (one on its way)
    for _ in range(2):
        submit_as("a")
    other = submit_as("b")
    assert passes(3) == [[other]]  # a's backlog waits for room


def test_a_tenant_whose_room_runs_out_within_the_batch_does_not_hide_another_in_that_pass(configured) -> None:  # noqa: ANN001
    limits(configured, running=2, batch=2)
    first = submit_as("a")
    assert passes(1) == [[first]]  # tenant a has room for one more
    second = submit_as("a")
    submit_as("a")  # a's third: no room for it
    other = submit_as("b")
    assert passes(1) == [[second], [other]]  # oldest first: a's room filled, b not hidden, a's third waits


def start_workers(n: int) -> None:
    """``n`` live worker processes on the cpu queue (their rows, as their heartbeats write them)."""
    with session_scope() as session:
        for pid in range(1, n + 1):
            store.register_worker(session, f"w{pid}", "cpu", "host", pid)


def set_status(job_id: str, status: str, pid: int | None = None) -> None:
    """What a worker's claim (running, on worker ``pid``) or its last commit writes."""
    with session_scope() as session:
        now = store.db_now(session)
        session.execute(update(Job).where(Job.id == job_id).values(
            status=status, worker_hostname="host" if pid else None, worker_pid=pid, heartbeat_at=now))


def test_a_worker_that_comes_free_goes_to_the_tenant_with_fewer_packs_at_work(configured) -> None:  # noqa: ANN001
    """Tenant a's backlog is more packs than there are workers; b submits one job while a holds
    both workers. When one frees, b's job goes next, not a's third pack (it went there, and b
    waited for a's whole backlog, however long, under any tenant_max_running)."""
    limits(configured, running=1000, batch=100)
    configured.pack_max_members = 1  # one job per pack: a's three jobs are three packs
    start_workers(2)
    backlog = [submit_as("a") for _ in range(3)]
    first, second = passes(1)
    assert [first, second] == [backlog[:1], backlog[1:2]]  # a's oldest two, one per worker
    set_status(backlog[0], "running", pid=1)
    set_status(backlog[1], "running", pid=2)
    other = submit_as("b")
    assert passes(1) == []  # both workers busy
    set_status(backlog[0], "succeeded")  # worker 1 is free; a still trains on worker 2
    assert passes(1) == [[other]]
    set_status(other, "running", pid=1)
    set_status(other, "succeeded")
    assert passes(1) == [backlog[2:]]  # then a's backlog goes on


def test_a_tenant_with_a_batch_of_backlog_does_not_hide_the_others_behind_it(configured) -> None:  # noqa: ANN001
    """The scheduler reads at most a batch of the oldest jobs; a tenant's backlog of a batch or
    more (no tenant at its running limit) hid every other tenant's jobs behind it until it
    drained: with free workers, one more read per worker, without the tenants already read,
    finds them in the same pass (with none known, the first read's packs are sent: they wait
    in the broker)."""
    limits(configured, running=1000, batch=2)
    configured.pack_max_members = 1  # one job per pack
    a = [submit_as("a") for _ in range(3)]
    b = [submit_as("b") for _ in range(2)]
    c = submit_as("c")
    start_workers(3)
    assert passes(1) == [a[:1], b[:1], [c]]  # a free worker for each tenant, c's job found behind b's batch
    assert passes(1) == []  # every worker has a pack on its way


def test_with_no_worker_known_a_pass_reads_one_batch(configured) -> None:  # noqa: ANN001
    """No live worker: the first batch's packs go to the broker to wait; the reads past a
    backlog (each a scan of it) are for sharing free workers, and there are none."""
    limits(configured, running=1000, batch=2)
    a = [submit_as("a") for _ in range(3)]
    submit_as("b")
    assert passes(1) == [a[:2]]
