"""``run_pack`` and the fenced storage it uses, in-process, on SQLite and PostgreSQL.

These cover what is awkward to provoke through a worker process: a crash between two chunks,
a stale writer, a duplicate delivery, a failing engine, packs of several jobs.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text, update

from services import engine, jobs
from services.config import get_settings
from services.db import checkpoints as ckpt
from services.db import repository
from services.db import scheduling
from services.db import arrays as codec
from services.db.models import Checkpoint, Dataset, HistoryChunk, Job, utcnow
from services.db.session import session_scope
from services.examples import statquest_job
from services.training import run_pack

from .conftest import (
    assert_contiguous, checkpoint_attempts, checkpoint_steps, final_parameters, history_rows, seed_job, submit,
)


class SimulatedCrash(BaseException):
    """Like a SIGKILL: nothing in run_pack handles it, the job stays running."""


def expire_lease(job_id: str, seconds: int = 3600) -> None:
    """The worker stopped renewing; the scheduler's pass then requeues the job."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
    with session_scope() as session:
        scheduling.requeue_expired(session, utcnow(), lease_seconds=600, max_attempts=100)


def row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)


def claim(job_ids: list[str]) -> list[ckpt.Claim]:
    with session_scope() as session:
        return ckpt.claim_jobs(session, job_ids, hostname="test", pid=1)


def tokens(claims: list[ckpt.Claim]) -> list[tuple[str, int]]:
    return [(c.job_id, c.attempt) for c in claims]


def ssr_history(job_id: str) -> list[float]:
    return jobs.get_history(job_id).ssr


def commit_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk's checkpoints in their own transaction (``monkeypatch.undo()`` restores the
    default, which commits fast chunks together about once a second)."""
    monkeypatch.setattr(get_settings(), "checkpoint_commit_seconds", 0.0)


def crash_on_call(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    real, calls = engine.train, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise SimulatedCrash
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train", train)


def test_claim_takes_queued_jobs_once_and_lapsed_ones_after_the_scheduler_requeued_them(configured) -> None:
    queued, other = submit(seed_job()).id, submit(seed_job()).id
    assert tokens(claim([queued])) == [(queued, 1)]
    assert tokens(claim([queued, other])) == [(other, 1)]  # a live lease is not taken
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == queued).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert claim([queued]) == []  # lapsed but not yet requeued: the scheduler decides
    expire_lease(queued)
    assert tokens(claim([queued])) == [(queued, 2)]
    assert row(queued).lost_leases == 1
    assert (row(queued).status, row(queued).worker_hostname, row(queued).worker_pid) == ("running", "test", 1)


def test_finished_and_cancelled_jobs_are_not_claimed(configured) -> None:
    done, cancelled = submit(statquest_job()).id, submit(statquest_job()).id
    run_pack([done], hostname="h", pid=1)
    jobs.cancel_job(cancelled)
    assert claim([done, cancelled]) == []


def test_a_stale_attempt_writes_nothing(configured) -> None:
    job_id = submit(seed_job()).id
    first = claim([job_id])[0]
    expire_lease(job_id)
    second = claim([job_id])[0]
    arrays = {"parameters/layers.0.weight": np.zeros((2, 1)), "step": np.array(7), "ssr": np.array(1.0)}
    write = ckpt.CheckpointWrite.of(first, 7, arrays, 1, np.ones(7))
    with session_scope() as session:
        assert ckpt.write_checkpoints(session, [write]) == {}
        ckpt.finish_jobs(session, [ckpt.Outcome(first, "succeeded", "max_steps")])
        ckpt.fail_jobs(session, [first], "stale")
    assert history_rows(job_id) == [] and checkpoint_steps(job_id) == []
    assert (row(job_id).status, row(job_id).step, row(job_id).attempts) == ("running", 0, second.attempt)
    assert first.attempt < second.attempt


def test_a_held_fence_writes_checkpoint_history_and_summary_in_one_go(configured) -> None:
    job_id = submit(seed_job()).id
    mine = claim([job_id])[0]
    arrays = {"parameters/layers.0.weight": np.zeros((2, 1)), "step": np.array(3), "ssr": np.array(0.5)}
    with session_scope() as session:
        held = ckpt.write_checkpoints(session, [ckpt.CheckpointWrite.of(mine, 3, arrays, 0, np.array([4.0, 2.0, 0.25, 0.5]))])
    assert tokens(list(held.values())) == tokens([mine])
    assert history_rows(job_id) == [(0, 4)] and checkpoint_attempts(job_id) == {3: 1}
    assert (row(job_id).step, row(job_id).ssr, row(job_id).best_ssr) == (3, 0.5, 0.25)
    with session_scope() as session:
        assert ckpt.load_latest(session, [job_id])[job_id]["step"].shape == ()


def test_resume_after_a_crash_continues_without_gap_or_repeat(configured, monkeypatch) -> None:
    document = seed_job(max_steps=95, checkpoint_every=10)
    reference, resumed = submit(document).id, submit(document).id
    run_pack([reference], hostname="h", pid=1)
    commit_every_chunk(monkeypatch)
    crash_on_call(monkeypatch, 4)  # chunks 1-3 are checkpointed (step 30), the 4th never ends
    with pytest.raises(SimulatedCrash):
        run_pack([resumed], hostname="h", pid=1)
    assert (row(resumed).status, row(resumed).step) == ("running", 30)
    monkeypatch.undo()
    run_pack([resumed], hostname="h", pid=2)  # a live lease: a redelivery now does nothing
    assert row(resumed).attempts == 1
    expire_lease(resumed)
    run_pack([resumed], hostname="h", pid=2)
    assert (row(resumed).status, row(resumed).step, row(resumed).attempts) == ("succeeded", 95, 2)
    assert_contiguous(resumed, 95)
    assert ssr_history(resumed) == ssr_history(reference)
    expected, got = final_parameters(reference), final_parameters(resumed)
    assert expected.keys() == got.keys()
    assert all(np.array_equal(expected[k], got[k]) for k in expected)
    assert checkpoint_attempts(resumed) == {0: 1, 10: 1, 20: 1, 30: 1, 40: 2, 50: 2, 60: 2, 70: 2, 80: 2, 90: 2, 95: 2}


def commits_counted() -> float:
    """Checkpoint transactions so far, as the worker's metric counts them."""
    return REGISTRY.get_sample_value("descent_checkpoint_write_seconds_count", {"queue": "cpu"}) or 0.0


def test_fast_chunks_are_committed_together_with_every_checkpoint(configured, monkeypatch) -> None:
    """Chunks that train in milliseconds are held and committed at the end: one transaction
    (not five), every checkpoint stored, one history row per job, the same numbers."""
    document = seed_job(max_steps=35, checkpoint_every=10)
    together = [submit(document | {"learning_rate": lr}).id for lr in (0.05, 0.1)]
    before = commits_counted()
    run_pack(together, hostname="h", pid=1)
    assert commits_counted() - before == 1
    commit_every_chunk(monkeypatch)
    alone = [submit(document | {"learning_rate": lr}).id for lr in (0.05, 0.1)]
    run_pack(alone, hostname="h", pid=1)
    for held, each in zip(together, alone):
        assert checkpoint_steps(held) == checkpoint_steps(each) == [0, 10, 20, 30, 35]
        assert history_rows(held) == [(0, 36)]
        assert history_rows(each) == [(0, 1), (1, 10), (11, 10), (21, 10), (31, 5)]
        assert ssr_history(held) == ssr_history(each)
        assert (row(held).status, row(held).step, row(held).best_ssr) == ("succeeded", 35, row(each).best_ssr)
        expected, got = final_parameters(each), final_parameters(held)
        assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_a_crash_before_the_commit_resumes_from_the_last_committed_checkpoint(configured, monkeypatch) -> None:
    """Held chunks that were never committed are trained again: same bits, no gap or repeat."""
    document = seed_job(max_steps=95, checkpoint_every=10)
    reference, resumed = submit(document).id, submit(document).id
    run_pack([reference], hostname="h", pid=1)
    crash_on_call(monkeypatch, 4)  # chunks 1-3 were held, not committed
    with pytest.raises(SimulatedCrash):
        run_pack([resumed], hostname="h", pid=1)
    monkeypatch.undo()
    assert (row(resumed).status, row(resumed).step, checkpoint_steps(resumed)) == ("running", 0, [])
    expire_lease(resumed)
    run_pack([resumed], hostname="h", pid=2)
    assert (row(resumed).status, row(resumed).step) == ("succeeded", 95)
    assert_contiguous(resumed, 95)
    assert ssr_history(resumed) == ssr_history(reference)
    assert set(checkpoint_attempts(resumed).values()) == {2}


def test_a_duplicate_delivery_of_a_finished_job_changes_nothing(configured) -> None:
    job_id = submit(statquest_job()).id
    run_pack([job_id], hostname="h", pid=1)
    before = (jobs.get_job(job_id), checkpoint_attempts(job_id), history_rows(job_id))
    run_pack([job_id], hostname="h", pid=2)
    assert (jobs.get_job(job_id), checkpoint_attempts(job_id), history_rows(job_id)) == before


def test_a_training_error_fails_the_job_and_is_not_raised(configured) -> None:
    """A real failure: the job's stored data no longer decodes to its recorded shape."""
    job_id = submit(seed_job()).id
    with session_scope() as session:
        session.get(Dataset, row(job_id).dataset_id).x = b"\x00" * 3
    run_pack([job_id], hostname="h", pid=1)
    job = jobs.get_job(job_id)
    assert job.status == "failed" and job.error.startswith("ValueError:")
    assert checkpoint_steps(job_id) == []


def test_cancel_requested_before_a_reclaim_cancels_at_once(configured, monkeypatch) -> None:
    job_id = submit(seed_job(max_steps=1000)).id
    commit_every_chunk(monkeypatch)
    crash_on_call(monkeypatch, 2)
    with pytest.raises(SimulatedCrash):
        run_pack([job_id], hostname="h", pid=1)
    jobs.cancel_job(job_id)
    expire_lease(job_id)
    monkeypatch.undo()
    run_pack([job_id], hostname="h", pid=2)
    job = jobs.get_job(job_id)
    assert (job.status, job.step) == ("cancelled", 10)
    assert checkpoint_steps(job_id) == [0, 10]


def test_jobs_that_agree_train_as_one_pack_others_in_their_own(configured, monkeypatch) -> None:
    same = [submit(seed_job(learning_rate=lr)).id for lr in (0.05, 0.1, 0.2)]
    wider = submit(seed_job(architecture={"layers": [1, 3, 1], "activation": "tanh"})).id
    sizes, real = [], engine.train
    monkeypatch.setattr(engine, "train", lambda xp, a, c, s, *r, **k: sizes.append(s.size) or real(xp, a, c, s, *r, **k))
    run_pack([*same, wider], hostname="h", pid=1)
    assert sizes == [3, 3, 3, 3, 1, 1, 1, 1]
    monkeypatch.undo()
    alone = submit(seed_job(learning_rate=0.1)).id
    run_pack([alone], hostname="h", pid=1)
    for job_id in [*same, wider]:
        assert (row(job_id).status, row(job_id).step) == ("succeeded", 35)
        assert checkpoint_steps(job_id) == [0, 10, 20, 30, 35]
    np.testing.assert_allclose(ssr_history(same[1]), ssr_history(alone), rtol=1e-12)


def test_members_stop_at_different_steps_and_leave_the_pack(configured) -> None:
    short, long = submit(seed_job(max_steps=12)).id, submit(seed_job(max_steps=35)).id
    run_pack([short, long], hostname="h", pid=1)
    assert checkpoint_steps(short) == [0, 10, 12] and checkpoint_steps(long) == [0, 10, 20, 30, 35]
    assert_contiguous(short, 12)
    assert_contiguous(long, 35)


def test_mini_batch_jobs_at_different_steps_resume_in_lockstep_packs(configured, monkeypatch) -> None:
    data = {"x": [[v] for v in np.linspace(0, 1, 8).tolist()], "y": [[v * v] for v in np.linspace(0, 1, 8).tolist()]}
    document = seed_job(max_steps=40, batch_size=3, data=data)
    ahead, fresh = submit(document).id, submit(document).id
    commit_every_chunk(monkeypatch)
    crash_on_call(monkeypatch, 3)
    with pytest.raises(SimulatedCrash):
        run_pack([ahead], hostname="h", pid=1)
    monkeypatch.undo()
    expire_lease(ahead)
    run_pack([ahead, fresh], hostname="h", pid=2)
    assert ssr_history(ahead) == ssr_history(fresh)
    assert_contiguous(ahead, 40)


def test_write_history_chunks_is_one_bulk_insert(configured) -> None:
    job_id = submit(seed_job()).id
    rows = [{"job_id": job_id, "first_step": 1000 * i, "ssr": np.arange(1000.0)} for i in range(50)]
    with session_scope() as session:
        ckpt.write_history_chunks(session, rows)
        count = session.scalar(select(func.count()).select_from(HistoryChunk).where(HistoryChunk.job_id == job_id))
    assert count == 50


def test_a_checkpoint_row_holds_every_array_of_the_state(configured) -> None:
    """Manifest + blob: the stored state rebuilds exactly, names, dtypes and shapes included."""
    job_id = submit(statquest_job()).id
    run_pack([job_id], hostname="h", pid=1)
    with session_scope() as session:
        manifest, data = session.execute(select(Checkpoint.manifest, Checkpoint.data)
                                         .where(Checkpoint.job_id == job_id, Checkpoint.step == 9)).one()
    stored = codec.unpack(manifest, data)
    names = {name for name, _, _ in manifest}
    assert {"step", "ssr", "stop_reason", "parameters/layers.1.bias", "velocity/layers.0.weight"} <= names
    assert stored["parameters/layers.0.weight"].shape == (2, 1) and int(stored["step"]) == 9
    assert stored["stop_reason"].dtype == np.int8


def test_pack_members_matches_packing_each_member_alone() -> None:
    arrays = {"parameters/w": np.arange(12.0).reshape(3, 2, 2), "step": np.array([1, 2, 3]),
              "stop_reason": np.array([0, 1, 2], dtype=np.int8), "ssr": np.array([0.5, np.nan, np.inf])}
    manifest, blobs = codec.pack_members(arrays)
    for i, blob in enumerate(blobs):
        alone = codec.pack({name: value[i] for name, value in arrays.items()})
        assert (manifest, blob) == alone
        rebuilt = codec.unpack(manifest, blob)
        assert all(np.array_equal(rebuilt[k], arrays[k][i], equal_nan=True) for k in arrays)


def test_history_values_round_trip_exactly(configured) -> None:
    job_id = submit(seed_job()).id
    values = np.array([20.423597677589, np.nan, np.inf, -np.inf, 5e-324, 1.0 / 3.0])
    with session_scope() as session:
        ckpt.write_history_chunks(session, [{"job_id": job_id, "first_step": 0, "ssr": values}])
        stored = session.scalar(select(HistoryChunk.ssr).where(HistoryChunk.job_id == job_id))
    np.testing.assert_array_equal(np.asarray(stored, dtype=np.float64), values)


def test_read_history_gives_back_every_value_written_on_either_database(configured) -> None:
    """PostgreSQL reads the chunks in binary (``array_send``, decoded by NumPy) where psycopg
    parsed each float as text: the values, their steps and a later chunk's overlap must come
    back exactly as written, NaN and infinities included."""
    job_id = submit(seed_job()).id
    first = np.array([20.423597677589, np.nan, np.inf, -np.inf, 5e-324, 1.0 / 3.0])
    second = np.array([-0.0, 1e300, 2.5])
    with session_scope() as session:
        ckpt.write_history_chunks(session, [{"job_id": job_id, "first_step": 0, "ssr": first},
                                            {"job_id": job_id, "first_step": 4, "ssr": second},
                                            {"job_id": job_id, "first_step": 9, "ssr": np.array([7.0, 8.0])}])
        steps, ssr = repository.read_history(session, job_id, 9)
    np.testing.assert_array_equal(steps, [0, 1, 2, 3, 4, 5, 6, 9])
    np.testing.assert_array_equal(ssr, np.concatenate([first[:4], second, [7.0]]))
    assert ssr.dtype == np.float64 and steps.dtype == np.int64


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_read_history_takes_a_null_element_as_nan_on_postgresql(configured) -> None:
    """Descent never writes SQL NULL elements, but a hand-made row (Grafana's users can write
    SQL) must read as NaN there, not shift the values after it."""
    job_id = submit(seed_job()).id
    with session_scope() as session:
        session.execute(text("INSERT INTO history_chunks (job_id, first_step, ssr) "
                             "VALUES (:job, 0, ARRAY[1.5, NULL, 3.5]::float8[]), (:job, 3, '{}'::float8[])"),
                        {"job": job_id})
        steps, ssr = repository.read_history(session, job_id, 2)
    np.testing.assert_array_equal(steps, [0, 1, 2])
    np.testing.assert_array_equal(ssr, [1.5, np.nan, 3.5])


def test_a_chunk_written_twice_is_stored_once(configured) -> None:
    """A retry after a commit that landed (the connection dropped on the way back) is exact."""
    job_id = submit(seed_job()).id
    mine = claim([job_id])[0]
    arrays = {"parameters/layers.0.weight": np.zeros((2, 1)), "step": np.array(3), "ssr": np.array(0.5)}
    write = ckpt.CheckpointWrite.of(mine, 3, arrays, 0, np.array([4.0, 2.0, 0.25, 0.5]))
    for _ in range(2):
        with session_scope() as session:
            ckpt.write_checkpoints(session, [write])
    assert history_rows(job_id) == [(0, 4)] and checkpoint_attempts(job_id) == {3: 1}
    assert (row(job_id).status, row(job_id).step) == ("running", 3)
