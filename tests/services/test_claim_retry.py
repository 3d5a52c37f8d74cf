"""A claim is retried whole when its commit fails, and a commit can fail after it landed (the
connection dropped on the way back). The retry then takes back the jobs the first try claimed
(running under this worker, stamped with that try's lease time) instead of claiming nothing
and leaving them running untrained until their lease lapsed and cost them a lost lease."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services import jobs
from services.db import checkpoints as ckpt
from services.db.models import Job
from services.db.scheduling import db_now
from services.db.session import session_scope
from services.training import run_pack
from tests.worker.conftest import seed_job, submit


def drop_first_commit(monkeypatch: pytest.MonkeyPatch, landed: bool) -> None:
    """The first commit of this process fails, after (``landed``) or before it reached the
    database; every later one goes through."""
    real, armed = Session.commit, [True]

    def commit(self: Session) -> None:
        if armed and landed:
            real(self)
        if armed:
            armed.clear()
            raise OperationalError("COMMIT", None, Exception("server closed the connection unexpectedly"))
        real(self)

    monkeypatch.setattr(Session, "commit", commit)


def row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)


@pytest.mark.parametrize("landed", [True, False])
def test_a_claim_whose_commit_failed_trains_the_job_once_with_no_lost_lease(configured, monkeypatch,  # noqa: ANN001
                                                                            landed: bool) -> None:
    job_id = submit(seed_job()).id
    drop_first_commit(monkeypatch, landed)
    run_pack([job_id], hostname="test", pid=1)  # the claim is run_pack's first transaction
    job = jobs.get_job(job_id)
    assert (job.status, job.stop_reason, job.step) == ("succeeded", "max_steps", 35)
    stored = row(job_id)
    assert (stored.attempts, stored.lost_leases) == (1, 0)


def test_only_this_workers_claim_stamped_by_an_earlier_try_is_taken_back(configured) -> None:  # noqa: ANN001
    job_id = submit(seed_job()).id
    with session_scope() as session:
        stamped = db_now(session)
        [claim] = ckpt.claim_jobs(session, [job_id], hostname="host", pid=7, now=stamped)
    with session_scope() as session:
        later = db_now(session)
        assert ckpt.claim_jobs(session, [job_id], hostname="other", pid=7, now=later, earlier=[stamped]) == []
        assert ckpt.claim_jobs(session, [job_id], hostname="host", pid=8, now=later, earlier=[stamped]) == []
        assert ckpt.claim_jobs(session, [job_id], hostname="host", pid=7, now=later, earlier=[later]) == []
        again = ckpt.claim_jobs(session, [job_id], hostname="host", pid=7, now=later, earlier=[stamped])
    assert [(c.job_id, c.attempt) for c in again] == [(claim.job_id, claim.attempt)] == [(job_id, 1)]
    assert row(job_id).attempts == 1  # taken back, not claimed again: the fence is unchanged
