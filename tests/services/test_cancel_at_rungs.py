"""A cancel is honoured when the member's next checkpoint lands on a successive-halving rung.

A member that reaches a rung leaves the training members before the commit and parks there
(queued, not dispatchable); the cancel asked for meanwhile must end it ``cancelled`` at that
checkpoint, not leave it parked for the cut to end early-stopped or send on training. The cut
itself, as a backstop, ends a parked member whose cancel was asked for, and every parked member
of a cancelled sweep, ``cancelled``. On SQLite and PostgreSQL, with the real worker use case
behind the scheduler's publish."""

from __future__ import annotations

import numpy as np
import pytest

from services import jobs, scheduler, sweeps, training
from services.db.models import Sweep
from services.db.session import session_scope
from services.sweep_spec import SweepCreate
from services.training import run_pack
from tests.services.conftest import set_job
from tests.worker.conftest import seed_job

RUNG = 10  # min_steps: the first rung, below the first checkpoint (25)


def train_now(job_ids: list[str], device: str) -> None:
    """The worker's use case itself as the publisher: a pass trains what it dispatches."""
    run_pack(job_ids, hostname="test", pid=1)


def halving_sweep() -> str:
    """Three members, one pack, rungs at 10, 30 and 90 (keep the best third)."""
    body = SweepCreate.model_validate({
        "name": "sh", "base": seed_job(max_steps=100, checkpoint_every=25),
        "grid": {"learning_rate": np.geomspace(0.002, 0.05, 3).tolist()},
        "early_stopping": {"type": "successive_halving", "min_steps": RUNG, "reduction_factor": 3}})
    return sweeps.submit_sweep(body).id


def members(sweep_id: str) -> list[str]:
    return [m.id for m in jobs.list_jobs(sweep_id=sweep_id).items]


def while_the_first_chunk_trains(monkeypatch: pytest.MonkeyPatch, action) -> None:  # noqa: ANN001
    """Run ``action`` once, as the user would while the pack's first chunk trains."""
    real, fired = training._train_slices, []

    def act_then_train(pack, every):  # noqa: ANN001, ANN202
        if not fired:
            fired.append(True)
            action()
        return real(pack, every)

    monkeypatch.setattr(training, "_train_slices", act_then_train)


def finals(job_ids: list[str]) -> dict[str, tuple[str, str | None, int]]:
    """Each job's (status, stop reason, step)."""
    found = {}
    for job_id in job_ids:
        job = jobs.get_job(job_id)
        found[job_id] = (job.status, job.stop_reason, job.step)
    return found


def test_a_cancel_asked_while_training_towards_a_rung_ends_the_member_cancelled_there(
        configured, monkeypatch) -> None:  # noqa: ANN001
    sweep_id = halving_sweep()
    ids = members(sweep_id)

    def cancel_each() -> None:
        for job_id in ids:
            assert jobs.get_job(job_id).status == "running"
            jobs.cancel_job(job_id)

    while_the_first_chunk_trains(monkeypatch, cancel_each)
    scheduler.run_pass("a", publish=train_now)  # trains the pack to the rung
    assert finals(ids) == {j: ("cancelled", None, RUNG) for j in ids}  # at the rung's checkpoint, not parked
    for _ in range(3):
        scheduler.run_pass("a", publish=train_now)
    assert finals(ids) == {j: ("cancelled", None, RUNG) for j in ids}


def test_cancelling_a_sweep_while_members_train_towards_a_rung_cancels_them_all(
        configured, monkeypatch) -> None:  # noqa: ANN001
    sweep_id = halving_sweep()
    while_the_first_chunk_trains(monkeypatch, lambda: sweeps.cancel_sweep(sweep_id))
    scheduler.run_pass("a", publish=train_now)  # trains the pack to the rung
    assert finals(members(sweep_id)) == {j: ("cancelled", None, RUNG) for j in members(sweep_id)}
    for _ in range(3):
        scheduler.run_pass("a", publish=train_now)
    read = sweeps.get_sweep(sweep_id)
    assert read.counts == {"cancelled": 3}, (read.counts, read.stop_reasons)
    assert finals(members(sweep_id)) == {j: ("cancelled", None, RUNG) for j in members(sweep_id)}


def parked_at_the_first_rung() -> tuple[str, list[str]]:
    """A sweep whose three members all trained to the first rung and wait there for the cut."""
    sweep_id = halving_sweep()
    report = scheduler.run_pass("a", publish=train_now)
    assert report.cut == [] and len(report.packs) == 1
    ids = members(sweep_id)
    assert finals(ids) == {j: ("queued", None, RUNG) for j in ids}
    return sweep_id, ids


def test_the_cut_ends_a_parked_winner_whose_cancel_was_asked_for_cancelled(configured) -> None:  # noqa: ANN001
    """Backstop: a parked row carrying a cancel request (parked before the worker honoured
    cancels at rungs) is cancelled by the cut, even as the rung's winner."""
    _, ids = parked_at_the_first_rung()
    winner = min(ids, key=lambda j: (jobs.get_job(j).ssr, j))
    set_job(winner, cancel_requested=True)
    sent: list[list[str]] = []
    report = scheduler.run_pass("a", publish=lambda job_ids, device: sent.append(job_ids))
    assert [rung for _, rung, _, _ in report.cut] == [RUNG]
    assert sent == []  # the winner is not sent on training
    expected = {j: ("succeeded", "early_stopped", RUNG) for j in ids} | {winner: ("cancelled", None, RUNG)}
    assert finals(ids) == expected


def test_the_cut_of_a_cancelled_sweep_ends_every_parked_member_cancelled(configured) -> None:  # noqa: ANN001
    """Backstop: a sweep cancelled while its members wait at a rung ends them cancelled, not
    early-stopped."""
    sweep_id, ids = parked_at_the_first_rung()
    with session_scope() as session:
        session.get(Sweep, sweep_id).cancelled = True
    scheduler.run_pass("a", publish=train_now)
    assert finals(ids) == {j: ("cancelled", None, RUNG) for j in ids}
    assert sweeps.get_sweep(sweep_id).counts == {"cancelled": 3}
