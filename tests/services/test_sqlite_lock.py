"""SQLite's write lock: a write transaction polls for it (``session._begin_immediate``) instead
of sleeping in SQLite's busy handler, and still gives up after ``LOCK_WAIT_SECONDS``."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import text

from services.db import session as db_session
from services.db.session import get_engine, session_scope
from services.errors import StorageError


def hold_write_lock(url: str, seconds: float) -> threading.Event:
    """Another connection takes the write lock and keeps it ``seconds``; the event is set once
    it holds it."""
    taken = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    threading.Thread(target=hold, daemon=True).start()
    assert taken.wait(5)
    return taken


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only (the shared ``configured`` fixture points the settings at this database)."""
    return sqlite_url


def busy_timeout() -> int:
    with get_engine().connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar())


def test_a_writer_waits_for_the_lock_and_writes_once_it_is_free(configured) -> None:
    with session_scope() as session:  # the connection exists, with its pragmas
        session.execute(text("SELECT 1"))
    hold_write_lock(configured.database_url, 0.3)
    started = time.monotonic()
    with session_scope(write=True) as session:
        session.execute(text("CREATE TABLE waited (a INTEGER)"))
    assert time.monotonic() - started >= 0.25  # it did wait for the other writer
    with session_scope() as session:
        assert session.execute(text("SELECT count(*) FROM waited")).scalar() == 0
    assert busy_timeout() == int(db_session.LOCK_WAIT_SECONDS * 1000)  # restored after the polls


def test_a_writer_gives_up_after_the_lock_wait(configured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_session, "LOCK_WAIT_SECONDS", 0.2)
    hold_write_lock(configured.database_url, 1.5)
    with pytest.raises(StorageError, match="locked"):
        with session_scope(write=True) as session:
            session.execute(text("CREATE TABLE never (a INTEGER)"))
