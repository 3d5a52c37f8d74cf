"""One tenant's backlog never hides another tenant's jobs from the scheduler.

The scheduler reads at most ``scheduler_batch`` of a queue's oldest jobs per pass. A tenant at
``tenant_max_running`` is left out of that read, and a tenant whose room runs out within it is
left out of one more, so the jobs of other tenants behind a backlog of a whole batch are
dispatched in the same pass, on SQLite and PostgreSQL."""

from __future__ import annotations

from services import jobs, scheduler
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
