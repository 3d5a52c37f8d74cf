"""Helpers for the use-case tests: specs, and rows a worker would write (the worker side is
another module's; these tests write through the models directly)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from sqlalchemy import update

from services.db import arrays
from services.db.models import Checkpoint, HistoryChunk, Job
from services.db.session import session_scope
from services.spec import JobCreate

# The StatQuest network of docs/design.md: [1, 2, 1] softplus.
STATQUEST = {
    "layers.0.weight": np.array([[3.34], [-3.53]]),
    "layers.0.bias": np.array([-1.43, 0.57]),
    "layers.1.weight": np.array([[-1.22, -2.30]]),
    "layers.1.bias": np.array([0.0]),
}
STATQUEST_X = [[0.0], [0.5], [1.0]]
STATQUEST_Y = [[0.0], [1.0], [0.0]]


def make_spec(**overrides: object) -> JobCreate:
    document: dict = {
        "name": "statquest",
        "architecture": {"layers": [1, 2, 1], "activation": "softplus"},
        "data": {"x": STATQUEST_X, "y": STATQUEST_Y},
        "learning_rate": 0.1,
    }
    document.update(overrides)
    return JobCreate.model_validate(document)


def set_job(job_id: str, **values: object) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def write_checkpoint(
    job_id: str, step: int, parameters: dict[str, np.ndarray], history: Sequence[float] = (),
    first_step: int | None = None,
) -> None:
    """A checkpoint as the worker stores it: arrays without the pack axis, plus a history chunk
    ``first_step ..`` (default: right after the job's current step) and the job's new step."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        start = job.step + 1 if first_step is None else first_step
        named = {f"parameters/{k}": v for k, v in parameters.items()} | {"step": np.array(step, dtype=np.int64)}
        manifest, data = arrays.pack(named)
        session.add(Checkpoint(job_id=job_id, step=step, attempt=1, manifest=manifest, data=data))
        if len(history):
            session.add(HistoryChunk(job_id=job_id, first_step=start, ssr=[float(v) for v in history]))
        job.step = step


@pytest.fixture
def spec() -> JobCreate:
    return make_spec()
