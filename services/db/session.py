"""Engines and session scopes. Engines are per process: a forked worker calls ``reset_engine``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.config import get_settings
from services.errors import StorageError


# PostgreSQL's application_name of a process's sessions (a worker's: "descent-worker:<pid>"):
# the scheduler ends stuck worker sessions, an operator sees who holds what.
WORKER_APPLICATION = "descent-worker"
_application = {"name": "descent"}


def set_application_name(name: str) -> None:
    """Name this process's PostgreSQL sessions from now on (call before ``reset_engine``)."""
    _application["name"] = name


def make_engine(url: str) -> Engine:
    """SQLite gets WAL and a busy timeout so API and worker processes can write side by side,
    and Descent issues its own BEGIN (see ``_sqlite_begin``). PostgreSQL sessions get a lock
    timeout and an idle-in-transaction timeout: a paused or partitioned process that holds a
    transaction open can neither block a takeover on its row locks nor keep them for long. They
    run in UTC (``_pg_utc``)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    settings = get_settings()
    options = (f"-c lock_timeout={int(settings.db_lock_timeout * 1000)} "
               f"-c idle_in_transaction_session_timeout={int(settings.db_idle_transaction_timeout * 1000)} "
               "-c TimeZone=UTC")
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                           connect_args={"options": options, "application_name": _application["name"]})
    event.listen(engine, "connect", _pg_utc)
    return engine


def _pg_utc(dbapi_conn, _record) -> None:  # noqa: ANN001 (DB-API objects)
    """Every timestamp a session reads is in UTC, whatever the server's or the client's zone:
    psycopg returns timestamptz in the session's zone, and code that compared one with the
    database's UTC clock after dropping the zone was hours off east of UTC (``packing.linger``).
    The startup option above sets it, but libpq's PGTZ is applied after the options and wins:
    then, and only then (the server reports the zone it settled on at connect), a SET costs
    one round trip per new connection."""
    if dbapi_conn.info.parameter_status("TimeZone") == "UTC":
        return
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    try:
        dbapi_conn.execute("SET TIME ZONE 'UTC'")
    finally:
        dbapi_conn.autocommit = autocommit


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 (DB-API objects)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_SECONDS * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    dbapi_conn.isolation_level = None  # the driver must not BEGIN by itself: _sqlite_begin does


def _sqlite_begin(conn) -> None:  # noqa: ANN001 (SQLAlchemy Connection)
    """A transaction that will write takes SQLite's write lock up front (BEGIN IMMEDIATE): one
    that read first and then wrote could not wait for the lock (SQLite refuses the upgrade at
    once, to avoid a deadlock) and would fail as "database is locked" under load."""
    if conn.get_execution_options().get("descent_write"):
        _begin_immediate(conn)
    else:
        conn.exec_driver_sql("BEGIN")


# How long a write transaction waits for SQLite's write lock (as the connection's busy timeout),
# and the polls in between: every 0.5 ms for the first 50 ms (a checkpoint commit), then 2 ms.
LOCK_WAIT_SECONDS = 30.0
_SHORT_POLL, _SHORT_WAIT, _LONG_POLL = 0.0005, 0.05, 0.002


def _begin_immediate(conn) -> None:  # noqa: ANN001 (SQLAlchemy Connection)
    """BEGIN IMMEDIATE, polling for the write lock instead of SQLite's busy handler. That one
    sleeps 1, 2, 5, 10, 15 ms... between tries, so a writer queued behind a worker's 7-10 ms
    checkpoint commit took the lock up to 8 ms after it was free, and every submit of an API
    process's group commit waited with it (in a burst of 1000 POSTs the polls took 4-13% off the
    wall time in interleaved runs, within the machine's noise: benchmarks/RESULTS.md, sixth
    session). Few transactions take this path (submits, sweeps, rung cuts), and a long wait
    polls every 2 ms. The polls go to the driver itself: through SQLAlchemy each try built a
    result, and under contention the tries were an eighth of the API's CPU (seventh session)."""
    raw = conn.connection.dbapi_connection
    started = time.monotonic()
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                waited = time.monotonic() - started
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY" or waited > LOCK_WAIT_SECONDS:
                    raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            time.sleep(_SHORT_POLL if waited < _SHORT_WAIT else _LONG_POLL)
    finally:
        raw.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_SECONDS * 1000)}")


def dialect_insert(session: Session, table: object):  # noqa: ANN201 (a dialect's Insert)
    """An INSERT that takes ``on_conflict_do_nothing``/``_do_update``: both of our databases
    spell ON CONFLICT alike, but SQLAlchemy builds it per dialect."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def _factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


def reset_engine() -> None:
    """Forget this process's engine (after fork, or when tests change the settings)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    _factory.cache_clear()


@contextmanager
def session_scope(write: bool = False) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, DB errors become StorageError.
    ``write``: the transaction reads before it writes; on SQLite it then holds the write lock
    from its start (elsewhere the flag changes nothing)."""
    session = _factory()()
    try:
        if write:
            session.connection(execution_options={"descent_write": True})
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise StorageError(str(exc).splitlines()[0]) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
