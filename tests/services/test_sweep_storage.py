"""A sweep's members bulk-stored: PostgreSQL's COPY path stores every column exactly as the
INSERT path does (SQLite always takes the INSERT)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select

from services.db import sweeps as store
from services.db.models import Job, utcnow
from services.db.repository import new_job_values
from services.db.session import session_scope
from services.jobs import submit_job
from services.spec import JobCreate

from .conftest import make_spec


def member_rows(dataset_id: str, prefix: str, n: int = 5) -> list[dict]:
    return [new_job_values(tenant_id="default", name=f"{prefix}-{i}", dataset_id=dataset_id, device="cpu",
                           spec={"learning_rate": 0.1 * (i + 1), "nested": {"list": [1, 2.5, None, "x"]}},
                           pack_key="k" * 40, cost=21.0, sweep_values={"learning_rate": 0.1 * (i + 1), "init.seed": i},
                           max_steps=1000 + i) | {"created_at": utcnow() + timedelta(microseconds=i)}
            for i in range(n)]


def stored(prefix: str) -> list[tuple]:
    with session_scope() as session:
        rows = session.execute(select(Job).where(Job.name.like(f"{prefix}-%")).order_by(Job.name)).scalars()
        return [tuple(getattr(job, c.key) for c in Job.__table__.columns if c.key not in ("id", "name", "created_at"))
                + (job.name.split("-")[1], job.created_at) for job in rows]


def test_bulk_members_are_stored_like_single_inserts(configured) -> None:
    dataset_id = submit_job(JobCreate.model_validate(make_spec())).model_dump()["id"]
    with session_scope() as session:
        dataset_id = session.get(Job, dataset_id).dataset_id
    bulk, single = member_rows(dataset_id, "bulk"), member_rows(dataset_id, "single")
    for row, twin in zip(bulk, single):
        twin["created_at"] = row["created_at"]
    with session_scope(write=True) as session:
        store.insert_members(session, bulk)  # COPY on PostgreSQL
        for row in single:
            session.execute(insert(Job.__table__), [row])
    got, want = stored("bulk"), stored("single")
    assert len(got) == 5 and got == want


def test_of_two_cancels_of_a_sweep_only_one_wins(configured) -> None:
    """Two cancels that both read the sweep as running (on PostgreSQL they may run side by side):
    the second one's conditional UPDATE finds it cancelled already, and the use case answers 409."""
    import pytest

    from services.errors import Conflict
    from services.sweep_spec import SweepCreate
    from services.sweeps import cancel_sweep, submit_sweep_once

    body = SweepCreate.model_validate({"name": "twice", "base": make_spec().model_dump(mode="json"),
                                    "grid": {"learning_rate": [0.1, 0.2]}})
    sweep_id = submit_sweep_once(body, None).value.id
    with session_scope(write=True) as first:
        assert store.cancel_members(first, sweep_id) == 2
    with session_scope(write=True) as second:
        assert store.cancel_members(second, sweep_id) is None
    with pytest.raises(Conflict, match="already cancelled"):
        cancel_sweep(sweep_id)
