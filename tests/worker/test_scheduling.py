"""The scheduler's passes in-process, with the real worker use case behind its publish, on
SQLite and PostgreSQL: packing, re-dispatch, lease recovery, the leader lease, successive
halving checked from the members' histories, sweeps packed like jobs alone."""

from __future__ import annotations

import contextlib

import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import delete, select, update

from services import heartbeat, jobs, scheduler, sweeps
from services.db import scheduling
from services.db.models import Job, SchedulerLease, Worker, utcnow
from services.db.session import session_scope
from services.sweep_spec import SweepCreate
from services.training import run_pack

from .conftest import assert_contiguous, final_parameters, history_rows, seed_job, submit


def messages(settings) -> list[list[str]]:
    """The job ids of every training task waiting in the embedded broker, in file-name order:
    kombu's file names start with the millisecond of publishing, then a random id, so two
    messages of one millisecond come in either order (compare them sorted)."""
    found = []
    for path in sorted((settings.broker_folder / "queue").glob("*.cpu.msg")):
        envelope = json.loads(path.read_text())
        assert envelope["headers"]["task"] == "descent.train_pack"
        found.append(json.loads(envelope["headers"]["argsrepr"].replace("'", '"'))[0])
    return found


def train_now(job_ids: list[str], device: str) -> None:
    """The worker's use case itself as the publisher: a pass trains what it dispatches."""
    run_pack(job_ids, hostname="test", pid=1)


def row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)


def lapse(job_id: str) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))


def test_a_pass_packs_independent_jobs_into_one_task_per_pack(configured) -> None:
    same = [submit(seed_job(learning_rate=lr)).id for lr in (0.01, 0.02, 0.05, 0.1)]
    other = submit(seed_job(architecture={"layers": [1, 3, 1], "activation": "tanh"})).id
    report = scheduler.run_pass("a")
    assert report.leader and [p.job_ids for p in report.packs] == [same, [other]]
    assert sorted(messages(configured)) == sorted([same, [other]])
    assert all(row(j).dispatched_at is not None for j in [*same, other])
    assert scheduler.run_pass("a").packs == []  # dispatched recently: not again


def test_a_group_spreads_over_the_live_workers(configured, monkeypatch) -> None:
    """Jobs submitted one by one spread when they are not tiny (summed cost of pack_linger_cost
    or more); tiny ones are a stream (``packing.Stream``) and go as one pack."""
    with session_scope() as session:
        for name in ("w1", "w2"):
            scheduling.register_worker(session, name, "cpu", "host", 1)
    ids = [submit(seed_job(learning_rate=0.01 * (i + 1))).id for i in range(5)]
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [ids]
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(ids)).values(status="succeeded"))
    monkeypatch.setattr(configured, "pack_linger_cost", 21.0)  # 5 StatQuest jobs (21 each) are not tiny now
    ids = [submit(seed_job(learning_rate=0.01 * (i + 1))).id for i in range(5)]
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [ids[:3], ids[3:]]


def test_a_sweeps_tiny_members_spread_over_the_live_workers(configured) -> None:
    """A sweep's members are submitted together (they share the sweep's submit time): however
    tiny, they spread over every free worker."""
    with session_scope() as session:
        for name in ("w1", "w2"):
            scheduling.register_worker(session, name, "cpu", "host", 1)
    body = SweepCreate.model_validate({"name": "s", "base": seed_job(), "grid": {"learning_rate": [0.01, 0.02, 0.03, 0.04]}})
    sweep = sweeps.submit_sweep(body)
    members = jobs.list_jobs(sweep_id=sweep.id).items
    assert len({m.created_at for m in members}) == 1
    assert sorted(len(p.job_ids) for p in scheduler.run_pass("a").packs) == [2, 2]
    with session_scope() as session:
        session.execute(update(Job).values(status="succeeded"))
        for name in ("w3", "w4"):
            scheduling.register_worker(session, name, "cpu", "host", 1)
    for _ in range(2):  # two sweeps back to back: two batches, not a stream
        sweeps.submit_sweep(body)
    assert sorted(len(p.job_ids) for p in scheduler.run_pass("a").packs) == [2, 2, 2, 2]


def test_a_queued_job_whose_message_was_lost_is_published_again(configured) -> None:
    with session_scope() as session:
        scheduling.register_worker(session, "w1", "cpu", "host", 1)
    job_id = submit(seed_job()).id
    scheduler.run_pass("a")
    for path in (configured.broker_folder / "queue").glob("*.msg"):
        path.unlink()  # the broker lost it
    configured.redispatch_seconds = 0.05
    time.sleep(0.1)
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [[job_id]]
    assert messages(configured) == [[job_id]]


def test_without_a_live_worker_new_jobs_are_sent_once_and_not_again(configured) -> None:
    """Messages for a queue nobody serves wait in the broker; re-sending them would pile up."""
    job_id = submit(seed_job(device="gpu")).id
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [[job_id]]
    configured.redispatch_seconds = 0.05
    time.sleep(0.1)
    assert scheduler.run_pass("a").packs == []


def test_one_queue_backlog_does_not_hide_another_queue(configured) -> None:
    configured.scheduler_batch = 2
    with session_scope() as session:
        scheduling.register_worker(session, "busy-cpu", "cpu", "host", 1)
        scheduling.register_worker(session, "idle-gpu", "gpu", "host", 2)
    run_pack_claim_only(submit(seed_job()).id)  # the only cpu worker is busy
    backlog = [submit(seed_job(learning_rate=0.01 * (i + 1))).id for i in range(3)]
    gpu = submit(seed_job(device="gpu")).id
    assert [(p.device, p.job_ids) for p in scheduler.run_pass("a").packs] == [("gpu", [gpu])]
    assert all(row(j).dispatched_at is None for j in backlog)


def test_a_pass_says_when_every_worker_of_the_waiting_jobs_is_busy(configured) -> None:
    with session_scope() as session:
        scheduling.register_worker(session, "only", "cpu", "host", 1)
    first = submit(seed_job()).id
    report = scheduler.run_pass("a")
    assert [p.job_ids for p in report.packs] == [[first]] and not report.saturated
    waiting = submit(seed_job(learning_rate=0.02)).id
    report = scheduler.run_pass("a")  # the one worker has a pack on its way: no free slot
    assert report.packs == [] and report.saturated and row(waiting).dispatched_at is None
    submit(seed_job(device="gpu"))  # a queue with no worker known is never saturated
    assert not scheduler.run_pass("a").saturated


def test_tiny_jobs_wait_a_moment_for_a_fuller_pack_while_another_pack_trains(configured, monkeypatch) -> None:
    """An idle queue sends a job at once; while another pack of the queue is on its way, fresh
    tiny jobs wait until the oldest has waited ``pack_linger_seconds``, then go as one pack. A
    job costing at least ``pack_linger_cost`` never waits."""
    monkeypatch.setattr(configured, "pack_linger_seconds", 0.5)
    with session_scope() as session:
        for name in ("w1", "w2"):
            scheduling.register_worker(session, name, "cpu", "host", 1)
    first = submit(seed_job()).id
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [[first]]  # idle: at once
    held = [submit(seed_job(learning_rate=lr)).id for lr in (0.02, 0.03)]
    report = scheduler.run_pass("a")
    assert report.packs == [] and 0 < report.hold <= 0.5 and not report.saturated
    assert all(row(j).dispatched_at is None for j in held)
    time.sleep(report.hold + 0.05)
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [held]
    monkeypatch.setattr(configured, "pack_linger_cost", 21)  # the StatQuest network's cost: 7 x 3
    third = submit(seed_job(learning_rate=0.04)).id
    report = scheduler.run_pass("a")  # both workers busy now: saturated, not held
    assert report.packs == [] and report.saturated and report.hold == 0
    with session_scope() as session:
        scheduling.register_worker(session, "w3", "cpu", "host", 1)
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [[third]]  # not tiny: at once


def test_a_saturated_scheduler_waits_for_a_freed_worker_not_for_new_work(configured) -> None:
    """While every worker is busy, a submit's ring would only cause a pass that finds no free
    slot; a worker's "freed" ring, or the period, ends the wait."""
    from services import doorbell

    bell = doorbell.Doorbell(configured)
    try:
        doorbell.ring(configured)
        started = time.monotonic()
        scheduler._wait(bell, started + 0.6, saturated=True)
        assert time.monotonic() - started >= 0.6  # the submit's ring was let pass
        doorbell.ring(configured, freed=True)
        started = time.monotonic()
        scheduler._wait(bell, started + 5.0, saturated=True)
        assert time.monotonic() - started < 2.0 and bell.freed
        doorbell.ring(configured)
        started = time.monotonic()
        scheduler._wait(bell, started + 5.0, saturated=False)  # a free slot: any ring wakes it
        assert time.monotonic() - started < 2.0 and not bell.freed
    finally:
        bell.close()
        doorbell.forget()


def test_a_burst_of_submits_rings_about_once_per_burst_gap_and_a_lone_submit_at_once(configured) -> None:
    """Rings that carry several submits space the next by BURST_RING_GAP_SECONDS (a broker
    message each saved); a ring after a quiet spell, and a freed worker's, go at once."""
    import queue as stdlib_queue

    from services import doorbell

    bell = doorbell.Doorbell(configured)

    def drained() -> int:
        found = 0
        with contextlib.suppress(stdlib_queue.Empty):
            while True:
                bell._open().get_nowait().ack()
                found += 1
        return found

    try:
        doorbell.ring(configured)  # a lone submit after a quiet spell
        started = time.monotonic()
        assert bell.wait(5.0) and time.monotonic() - started < 1.0
        time.sleep(0.2)
        drained()
        burst = 0.5
        started = time.monotonic()
        while time.monotonic() - started < burst:  # a submit every 2 ms
            doorbell.ring(configured)
            time.sleep(0.002)
        time.sleep(0.2)
        sent = drained()
        assert 2 <= sent <= burst / (3 * doorbell.RING_GAP_SECONDS)  # about one per 50 ms, not one per 10 ms
        doorbell.ring(configured)
        doorbell.ring(configured)  # a ring carrying two: the next would wait the burst gap...
        time.sleep(0.05)
        drained()
        doorbell.ring(configured, freed=True)  # ...but a freed worker's does not
        started = time.monotonic()
        assert bell.wait(5.0) and bell.freed and time.monotonic() - started < 1.0
    finally:
        bell.close()
        doorbell.forget()


def test_a_freed_workers_ring_cuts_a_burst_gap_short(configured) -> None:
    """The sending thread holds a burst's next ring for the burst gap, but a freed worker's ring
    made meanwhile goes RING_GAP_SECONDS after the last send."""
    import threading

    from services import doorbell

    ringer = doorbell._Ringer(configured)
    try:
        sent, gap = time.monotonic(), 0.6
        done = threading.Event()
        threading.Thread(target=lambda: (ringer._hold(sent, gap), done.set()), daemon=True).start()
        assert not done.wait(0.1)  # a submit's ring waits out the gap...
        with ringer.lock:
            ringer.freed = True
        ringer.urgent.set()  # ...until a worker comes free
        assert done.wait(0.3)
        assert time.monotonic() - sent < gap
    finally:
        ringer.stop()


def test_a_lapsed_lease_is_requeued_and_a_job_that_keeps_losing_it_fails(configured) -> None:
    configured.max_attempts = 2
    job_id = submit(seed_job()).id
    run_pack_claim_only(job_id)
    lapse(job_id)
    report = scheduler.run_pass("a")
    assert (report.requeued, report.failed) == (1, 0)
    assert (row(job_id).status, row(job_id).lost_leases) == ("queued", 1)
    assert [p.job_ids for p in report.packs] == [[job_id]]
    run_pack_claim_only(job_id)
    lapse(job_id)
    report = scheduler.run_pass("a")
    assert (report.requeued, report.failed) == (0, 1)
    job = jobs.get_job(job_id)
    assert job.status == "failed" and "gave up after 2 attempts" in job.error and job.finished_at


def run_pack_claim_only(job_id: str) -> None:
    """A worker that claimed the job and died before its first checkpoint."""
    from services.db import checkpoints as ckpt

    with session_scope() as session:
        assert ckpt.claim_jobs(session, [job_id], hostname="dead", pid=9)


def test_only_the_lease_holder_acts_and_another_takes_over(configured) -> None:
    submit(seed_job())
    assert scheduler.run_pass("a").leader
    follower = scheduler.run_pass("b")
    assert not follower.leader and follower.packs == []
    with session_scope() as session:  # a's lease lapses (a died)
        session.execute(update(SchedulerLease).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert scheduler.run_pass("b").leader
    assert not scheduler.run_pass("a").leader
    with session_scope() as session:
        scheduling.release_leader(session, "b")  # a graceful stop hands over at once
    assert scheduler.run_pass("a").leader


def halving_sweep(eta: int = 3) -> SweepCreate:
    base = seed_job(max_steps=100, checkpoint_every=25)
    rates = np.geomspace(0.002, 0.05, 9).tolist()
    return SweepCreate.model_validate({
        "name": "sh", "base": base, "grid": {"learning_rate": rates},
        "early_stopping": {"type": "successive_halving", "min_steps": 10, "reduction_factor": eta},
    })


def run_until_finished(sweep_id: str, passes: int = 50) -> None:
    for _ in range(passes):
        scheduler.run_pass("a", publish=train_now)
        if sweeps.get_sweep(sweep_id).status == "finished":
            return
    raise AssertionError(f"sweep not finished after {passes} passes: {sweeps.get_sweep(sweep_id)}")


def test_successive_halving_stops_exactly_the_right_members_at_the_right_steps(configured) -> None:
    sweep = sweeps.submit_sweep(halving_sweep())
    run_until_finished(sweep.id)
    assert_cut_across_the_sweep(sweep.id)


def test_a_rung_waits_for_members_of_other_packs_still_in_the_queue(configured) -> None:
    """Members of three packs (three widths): while two packs wait in the broker, the first
    parks at rung 10 and nothing is cut; the cut comes once all nine are there."""
    base = seed_job(max_steps=100, checkpoint_every=25)
    sweep = sweeps.submit_sweep(SweepCreate.model_validate({
        "name": "packs", "base": base,
        "grid": {"architecture.layers": [[1, 2, 1], [1, 3, 1], [1, 4, 1]], "learning_rate": [0.002, 0.01, 0.05]},
        "early_stopping": {"type": "successive_halving", "min_steps": 10, "reduction_factor": 3},
    }))
    sent: list[list[str]] = []
    assert len(scheduler.run_pass("a", publish=lambda ids, device: sent.append(ids)).packs) == 3
    train_now(sent[0], "cpu")  # one pack reaches rung 10 and parks; two wait in the broker
    assert all(row(j).rung == 10 for j in sent[0]) and all(row(j).rung is None for j in sent[1])
    assert scheduler.run_pass("a", publish=lambda ids, device: sent.append(ids)).cut == []
    assert len(sent) == 3, "parked members are not dispatched again"
    for ids in sent[1:]:
        train_now(ids, "cpu")
    assert scheduler.run_pass("a", publish=train_now).cut[0][1:] == (10, 3, 6)
    run_until_finished(sweep.id)
    assert_cut_across_the_sweep(sweep.id)


def test_a_sweep_with_members_parked_at_two_rungs_is_cut_from_the_lowest(configured) -> None:
    """A sweep cut too early by an older release (members parked at rungs 10 and 30 at once)
    still finishes: those above the lowest rung do not block its cut."""
    sweep = sweeps.submit_sweep(halving_sweep())
    scheduler.run_pass("a", publish=lambda ids, device: None)
    ids = [m.id for m in jobs.list_jobs(sweep_id=sweep.id, limit=100).items]
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(ids[:6])).values(rung=10, ssr=1.0))
        session.execute(update(Job).where(Job.id.in_(ids[6:])).values(rung=30, ssr=1.0))
    with session_scope() as session:
        assert scheduling.rung_ready(session, sweep.id, 30) is None  # six members may still arrive
        assert sorted(p.job_id for p in scheduling.rung_ready(session, sweep.id, 10)) == sorted(ids[:6])


def assert_cut_across_the_sweep(sweep_id: str) -> None:
    """Each rung stopped exactly the members that a cut over the whole sweep stops, read from
    the members' own histories: the best third at rungs 10, 30 and 90 go on (9 -> 3 -> 1)."""
    sweep = sweeps.get_sweep(sweep_id)
    members = jobs.list_jobs(sweep_id=sweep.id, limit=100).items
    curves = {m.id: jobs.get_history(m.id).ssr for m in members}
    alive = [m.id for m in members]
    for rung in (10, 30, 90):  # rungs below max_steps 100: 10 * 3**k
        at_rung = sorted(alive, key=lambda j: (curves[j][rung], j))
        keep = at_rung[: math.ceil(len(at_rung) / 3)]
        for job_id in set(at_rung) - set(keep):
            job = jobs.get_job(job_id)
            assert (job.status, job.stop_reason, job.step) == ("succeeded", "early_stopped", rung), job
        alive = keep
    assert len(alive) == 1
    winner = jobs.get_job(alive[0])
    assert (winner.status, winner.stop_reason, winner.step) == ("succeeded", "max_steps", 100)
    for m in members:
        assert_contiguous(m.id, jobs.get_job(m.id).step)
    scheduler.run_pass("a")  # maintenance stamps the finished sweep
    read = sweeps.get_sweep(sweep.id)
    assert read.finished_at is not None
    assert read.stop_reasons == {"early_stopped": 8, "max_steps": 1}
    assert read.status == "finished" and read.best.job_id == winner.id
    assert [e.stop_reason for e in read.leaderboard].count("early_stopped") == 8


def test_a_pack_of_sweep_members_equals_the_same_jobs_trained_alone(configured) -> None:
    base = seed_job(max_steps=60, checkpoint_every=25)
    body = SweepCreate.model_validate({"name": "p", "base": base,
                                       "grid": {"learning_rate": [0.01, 0.05], "init.seed": [1, 2]}})
    sweep = sweeps.submit_sweep(body)
    report = scheduler.run_pass("a", publish=train_now)
    assert len(report.packs) == 1 and len(report.packs[0].job_ids) == 4
    for member in jobs.list_jobs(sweep_id=sweep.id).items:
        alone = submit(base | {"learning_rate": member.sweep_values["learning_rate"],
                               "init": {"seed": member.sweep_values["init.seed"]}}).id
        run_pack([alone], hostname="test", pid=1)
        assert jobs.get_history(alone).ssr == jobs.get_history(member.id).ssr
        expected, got = final_parameters(alone), final_parameters(member.id)
        assert all(np.array_equal(expected[k], got[k]) for k in expected)
        assert history_rows(alone) == history_rows(member.id)


def test_cancel_a_sweep_stops_queued_members_now_and_running_ones_at_a_checkpoint(configured) -> None:
    body = SweepCreate.model_validate({"name": "c", "base": seed_job(max_steps=100, checkpoint_every=10),
                                       "grid": {"learning_rate": [0.01, 0.02, 0.03]}})
    sweep = sweeps.submit_sweep(body)
    first = jobs.list_jobs(sweep_id=sweep.id).items[-1].id
    run_pack_claim_only(first)
    cancelled = sweeps.cancel_sweep(sweep.id)
    assert cancelled.status == "cancelled" and cancelled.counts == {"cancelled": 2, "running": 1}
    assert row(first).cancel_requested
    run_pack([first], hostname="test", pid=1)  # nothing to claim: the dead claim still holds it
    assert sweeps.get_sweep(sweep.id).counts == {"cancelled": 2, "running": 1}
    lapse(first)
    scheduler.run_pass("a", publish=train_now)  # requeued, claimed, stopped at its first checkpoint
    job = jobs.get_job(first)
    assert (job.status, job.step) == ("cancelled", 0)  # the cancel is honoured at the step-0 checkpoint
    assert sweeps.get_sweep(sweep.id).counts == {"cancelled": 3}


@pytest.mark.parametrize("members", [1, 7])
def test_sweep_accepts_and_lists_members_in_order(configured, members: int) -> None:
    body = SweepCreate.model_validate({"name": "o", "base": seed_job(),
                                       "grid": {"learning_rate": [0.01 * (i + 1) for i in range(members)]}})
    sweep = sweeps.submit_sweep(body)
    listed = jobs.list_jobs(sweep_id=sweep.id, limit=100).items
    assert sorted(m.sweep_values["learning_rate"] for m in listed) == body.grid["learning_rate"]
    assert {m.name for m in listed} == {f"o-{i}" for i in range(members)}


def test_only_free_workers_get_packs_and_jobs_that_wait_leave_together(configured, monkeypatch) -> None:
    monkeypatch.setattr(configured, "pack_linger_seconds", 0.0)  # free slots alone decide here
    with session_scope() as session:
        for name in ("w1", "w2"):
            scheduling.register_worker(session, name, "cpu", "host", 1)
    busy = submit(seed_job(learning_rate=0.3)).id
    run_pack_claim_only(busy)  # one worker is training
    first = [submit(seed_job(learning_rate=0.01 * (i + 1))).id for i in range(4)]
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [first]  # one free worker, one pack
    later = [submit(seed_job(learning_rate=0.001 * (i + 1))).id for i in range(3)]
    assert scheduler.run_pass("a").packs == []  # that pack is in flight: no worker is free
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_([busy, *first])).values(status="succeeded"))
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [later[:2], later[2:]]


def test_a_finished_sweep_has_its_finished_at_before_and_after_the_stamp(configured) -> None:
    """Finished is read from the members; finished_at was written only by the next pass, so a
    read in between gave a finished sweep without one. Both now give the last member's end."""
    sweep = sweeps.submit_sweep(SweepCreate.model_validate({
        "name": "f", "base": seed_job(max_steps=5), "grid": {"learning_rate": [0.01, 0.02]}}))
    sent: list[list[str]] = []
    scheduler.run_pass("a", publish=lambda ids, device: sent.append(ids))
    assert sweeps.get_sweep(sweep.id).finished_at is None
    for ids in sent:
        train_now(ids, "cpu")
    read = sweeps.get_sweep(sweep.id)
    last = max(jobs.get_job(m.id).finished_at for m in jobs.list_jobs(sweep_id=sweep.id).items)
    assert read.status == "finished" and read.finished_at == last
    scheduler.run_pass("a")  # the stamp
    assert sweeps.get_sweep(sweep.id).finished_at == last


def test_a_killed_workers_row_goes_at_the_next_beat_of_a_neighbour(configured) -> None:
    """Only a row of this host whose process is gone and that missed two beats is forgotten: a
    live process, a recent row (maybe another PID namespace) and another host's rows stay."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host, old = socket.gethostname(), utcnow() - timedelta(minutes=1)
    rows = {"dead": (host, gone.pid, old), "recent": (host, gone.pid, utcnow()),
            "alive": (host, os.getppid(), old), "elsewhere": ("another-host", gone.pid, old)}
    with session_scope() as session:
        for name, (where, pid, seen) in rows.items():
            scheduling.register_worker(session, name, "cpu", where, pid)
            session.execute(update(Worker).where(Worker.name == name).values(seen_at=seen))
    with session_scope() as session:
        heartbeat.forget_dead_neighbours(session)
    with session_scope() as session:
        assert sorted(session.scalars(select(Worker.name))) == ["alive", "elsewhere", "recent"]


def test_a_pass_deletes_expired_idempotency_keys_and_keeps_fresh_ones(configured) -> None:
    """Keys older than their lifetime already count as absent; the scheduler's maintenance also
    deletes their rows (a backlog at most ``batch`` rows per pass), so the table holds about a
    lifetime of keys instead of every key ever sent. The resources they made stay."""
    from services.db import idempotency
    from services.db.models import IdempotencyKey
    from services.spec import JobCreate

    def keyed(*keys: str) -> list[str]:
        return [jobs.submit_job_once(JobCreate.model_validate(seed_job(name=key)), key).value.id for key in keys]

    def age(pattern: str) -> None:
        expired = utcnow() - timedelta(seconds=configured.idempotency_key_ttl + 60)
        with session_scope() as session:
            session.execute(update(IdempotencyKey).where(IdempotencyKey.key.like(pattern)).values(created_at=expired))

    def stored() -> list[str]:
        with session_scope() as session:
            return sorted(session.scalars(select(IdempotencyKey.key)))

    made = keyed("old-1", "old-2", "fresh")
    age("old-%")
    scheduler.run_pass("a")
    assert stored() == ["fresh"]
    assert [jobs.get_job(job_id).id for job_id in made] == made
    made += keyed("older-1", "older-2")
    age("older-%")
    with session_scope() as session:
        assert idempotency.forget_expired(session, utcnow() - timedelta(hours=1), batch=1) == 1
    assert len(stored()) == 2


def test_a_key_reused_while_the_purge_waits_for_it_is_kept(pg_url: str) -> None:
    """PostgreSQL: the purge picked an expired key, then waited on its row while a create reused
    the key (``store_key`` overwrote the row: a fresh key for a new resource). On the row's new
    version it still matched the key list picked before, and deleted the fresh key: a retry of
    that create would have made a second resource."""
    import threading

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from services.db import idempotency
    from services.db.models import IdempotencyKey

    engine = create_engine(pg_url)
    expired = utcnow() - timedelta(days=2)
    cutoff = utcnow() - timedelta(days=1)
    try:
        with Session(engine) as session, session.begin():
            session.execute(delete(IdempotencyKey))
            session.add(IdempotencyKey(key="k", request_hash="old", resource="job", resource_id="a", created_at=expired))
        with Session(engine) as create:
            with create.begin():
                assert idempotency.store_key(create, "default", "k", "new", "job", "b", cutoff)
                purged: list[int] = []

                def purge() -> None:
                    with Session(engine) as session, session.begin():
                        purged.append(idempotency.forget_expired(session, cutoff))

                purger = threading.Thread(target=purge)
                purger.start()
                time.sleep(0.5)  # the purge has picked the key and waits for the row lock
            purger.join(10)
        assert purged == [0]
        with Session(engine) as session:
            assert session.get(IdempotencyKey, ("default", "k")).request_hash == "new"
    finally:
        engine.dispose()
