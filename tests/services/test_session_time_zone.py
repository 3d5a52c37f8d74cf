"""Timestamps are compared as instants, whatever the zone they are read in.

psycopg returns a timestamptz in the session's zone (the server's default, or the client's
PGTZ). The scheduler's linger dropped that zone and compared the wall clock with the database's
UTC clock: east of UTC a job looked submitted in the future, and tiny jobs were held on every pass
for as long as another pack of their queue trained. PostgreSQL sessions now run in UTC, and the
linger converts before it subtracts."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from services import packing, scheduler
from services.db import scheduling
from services.db.session import make_engine, reset_engine, session_scope
from services.packing import QueuedJob
from tests.worker.conftest import seed_job, submit

TOKYO = timezone(timedelta(hours=9))


def test_linger_compares_instants_not_wall_clocks() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    submitted = (now - timedelta(seconds=0.01)).astimezone(TOKYO)  # 10 ms ago, read in Tokyo
    jobs = [QueuedJob("j", "k", "cpu", 21.0, created_at=submitted)]
    assert packing.linger(jobs, busy=1, now=now, seconds=0.05, small=1e6) == pytest.approx(0.04)
    old = [QueuedJob("j", "k", "cpu", 21.0, created_at=(now - timedelta(seconds=1)).astimezone(TOKYO))]
    assert packing.linger(old, busy=1, now=now, seconds=0.05, small=1e6) == 0
    naive = [QueuedJob("j", "k", "cpu", 21.0, created_at=(now - timedelta(seconds=1)).replace(tzinfo=None))]
    assert packing.linger(naive, busy=1, now=now, seconds=0.05, small=1e6) == 0  # SQLite: naive UTC


def test_postgresql_sessions_run_in_utc_whatever_the_clients_zone(pg_url: str, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")  # libpq sends it as the session's TimeZone, after the options
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar() == "UTC"
            assert conn.execute(text("SELECT now()")).scalar().utcoffset() == timedelta(0)
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_tiny_jobs_are_not_held_forever_in_a_non_utc_session(configured, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    reset_engine()
    monkeypatch.setattr(configured, "pack_linger_seconds", 0.05)
    with session_scope() as session:
        for name in ("w1", "w2", "w3"):
            scheduling.register_worker(session, name, "cpu", "host", 1)
    first = submit(seed_job()).id
    assert [p.job_ids for p in scheduler.run_pass("a").packs] == [[first]]  # one pack on its way
    held = submit(seed_job(learning_rate=0.02)).id
    time.sleep(0.3)  # far beyond pack_linger_seconds
    report = scheduler.run_pass("a")
    assert [p.job_ids for p in report.packs] == [[held]], report
