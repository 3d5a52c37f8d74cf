"""What "nothing lost" means, checked after every fault: each job finished, exactly one SSR per
step and every SSR and final parameter bit-equal to a fault-free run of the same spec, fences
that only moved forward, and no job left ``running`` without a live lease."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import or_, select

from services import engine, jobs
from services.db.models import Job
from services.db.scheduling import db_now
from services.db.session import session_scope
from services.spec import JobRead
from tests.worker.conftest import assert_contiguous, checkpoint_attempts, final_parameters


@dataclass(frozen=True)
class Reference:
    parameters: dict[str, np.ndarray]
    ssr: np.ndarray  # SSR at steps 0..max_steps


_known: dict[str, Reference] = {}


def reference(document: dict) -> Reference:
    return references([document])[0]


def references(documents: list[dict]) -> list[Reference]:
    """The fault-free runs: the same specs trained by the engine in this process, those not
    known yet as one pack (a member's numbers do not depend on its pack mates). Cached: a
    spec's name and checkpoint cadence do not change its numbers."""
    keys = [json.dumps({k: v for k, v in d.items() if k not in ("name", "checkpoint_every")}, sort_keys=True)
            for d in documents]
    missing = {key: document for key, document in zip(keys, documents) if key not in _known}
    if missing:
        _known.update(zip(missing, _train(list(missing.values()))))
    return [_known[key] for key in keys]


def _train(documents: list[dict]) -> list[Reference]:
    first = documents[0]
    arch = engine.Architecture(tuple(first["architecture"]["layers"]), first["architecture"]["activation"],
                               first["architecture"]["output_activation"])
    steps = [d["stop"]["max_steps"] for d in documents]
    config = engine.PackConfig(
        learning_rate=np.array([d["learning_rate"] for d in documents], dtype=np.float64),
        trainable={name: np.ones(len(documents), dtype=bool) for name in arch.parameter_shapes()},
        max_steps=np.array(steps, dtype=np.int64),
        min_step_size=np.array([d["stop"]["min_step_size"] for d in documents], dtype=np.float64),
        target_ssr=np.full(len(documents), -np.inf), momentum=None, batch_size=None, batch_seed=0)
    starts = [engine.init_parameters(arch, d["init"]["seed"]) for d in documents]
    stacked = {name: np.stack([start[name] for start in starts]) for name in starts[0]}
    x, y = np.array(first["data"]["x"]), np.array(first["data"]["y"])
    state = engine.init_state(np, arch, config, stacked, x, y)
    ssr0 = state.to_arrays()["ssr"].copy()
    state, history = engine.train(np, arch, config, state, x, y, max(steps))
    return [Reference({name: np.asarray(value[i]) for name, value in state.parameters.items()},
                      np.concatenate([[ssr0[i]], history[i, :n]])) for i, n in enumerate(steps)]


def assert_nothing_lost(documents: dict[str, dict], lease_seconds: float) -> list[JobRead]:
    """``documents``: job id -> the spec it was submitted with."""
    found = []
    expected_runs = dict(zip(documents, references(list(documents.values()))))
    for job_id, document in documents.items():
        job = jobs.get_job(job_id)
        steps = document["stop"]["max_steps"]
        assert (job.status, job.stop_reason, job.step) == ("succeeded", "max_steps", steps), job
        assert_contiguous(job_id, steps)
        expected = expected_runs[job_id]
        ssr = np.array(jobs.get_history(job_id).ssr, dtype=np.float64)
        differ = np.flatnonzero(ssr != expected.ssr)
        assert differ.size == 0, f"job {job_id}: SSR differs from the fault-free run from step {differ[:1]}"
        stored = final_parameters(job_id)
        for name, value in expected.parameters.items():
            assert np.array_equal(stored[f"parameters/{name}"], value), f"job {job_id}: {name} not bit-equal"
        assert_fences_forward(job)
        found.append(job)
    assert_no_orphans(lease_seconds)
    return found


def assert_fences_forward(job: JobRead) -> None:
    """Checkpoints in step order were written by attempts that never went back: no stale
    worker wrote after a newer claim did, and the last one is the job's final attempt."""
    attempts = [attempt for _, attempt in sorted(checkpoint_attempts(job.id).items())]
    assert attempts == sorted(attempts), f"job {job.id}: a stale attempt wrote after a newer one: {attempts}"
    assert attempts[-1] == job.attempts, f"job {job.id}: last checkpoint by attempt {attempts[-1]} of {job.attempts}"


def assert_no_orphans(lease_seconds: float) -> None:
    """Nothing is ``running`` without a lease renewed within ``lease_seconds``."""
    with session_scope() as session:
        stale = db_now(session) - timedelta(seconds=lease_seconds)
        orphans = session.execute(select(Job.id, Job.heartbeat_at).where(
            Job.status == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale))).all()
    assert not orphans, f"running without a live lease: {orphans}"
