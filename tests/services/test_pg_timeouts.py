"""PostgreSQL sessions end a stuck transaction instead of letting it block a takeover: a waiter
gives up after ``db_lock_timeout``, and a holder idle in its transaction for
``db_idle_transaction_timeout`` (a stopped worker mid-checkpoint) is cut off by the server."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from services.config import get_settings
from services.db.session import make_engine


@pytest.fixture
def engine(pg_url: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("DESCENT_DB_LOCK_TIMEOUT", "0.3")
    monkeypatch.setenv("DESCENT_DB_IDLE_TRANSACTION_TIMEOUT", "1")
    get_settings.cache_clear()
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM scheduler_leases WHERE name = 'timeout-test'"))
        conn.execute(text("INSERT INTO scheduler_leases (name, holder, expires_at) VALUES ('timeout-test', 'a', now())"))
    yield engine
    engine.dispose()
    get_settings.cache_clear()


def test_a_waiter_gives_up_and_an_idle_holder_is_cut_off(engine) -> None:  # noqa: ANN001
    holder = engine.connect()
    holder.begin()
    holder.execute(text("UPDATE scheduler_leases SET holder = 'stopped' WHERE name = 'timeout-test'"))
    started = time.monotonic()
    with pytest.raises(OperationalError, match="lock timeout"), engine.begin() as waiter:
        waiter.execute(text("UPDATE scheduler_leases SET holder = 'b' WHERE name = 'timeout-test'"))
    assert time.monotonic() - started < 3
    time.sleep(1.5)  # the holder stays idle in its transaction: the server ends its session
    with engine.begin() as taker:
        taker.execute(text("UPDATE scheduler_leases SET holder = 'b' WHERE name = 'timeout-test'"))
        assert taker.execute(text("SELECT holder FROM scheduler_leases WHERE name = 'timeout-test'")).scalar() == "b"
    with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
        holder.execute(text("SELECT 1"))
    holder.invalidate()
