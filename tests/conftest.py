"""Shared fixtures: migrated databases (SQLite and PostgreSQL) and settings pointed at them.

Every database here is made by the Alembic migrations, never by ``create_all``, so the tests
run against the schema production gets.

- ``sqlite_url``: a fresh migrated SQLite file in ``tmp_path`` (a copy of one migrated template).
- ``pg_url``: one fresh PostgreSQL database per test session, migrated, dropped at the end;
  skipped when no server answers at ``DESCENT_TEST_PG_ADMIN_URL``.
- ``db_url``: parametrized over both; the PostgreSQL one is emptied before each test.
- ``configured``: ``DESCENT_DATABASE_URL``/``DESCENT_HOME`` pointed at ``db_url`` and a tmp home
  (filesystem broker inside it), caches reset before and after; yields the Settings.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from services.config import Settings, get_settings
from services.db.migrate import upgrade
from services.db.session import reset_engine

PG_ADMIN_URL = os.environ.get("DESCENT_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = ("checkpoints", "history_chunks", "jobs", "datasets", "sweeps", "scheduler_leases", "workers",
          "idempotency_keys")


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrating once and copying keeps a fresh database per test cheap."""
    path = tmp_path_factory.mktemp("sqlite-template") / "descent.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "db" / "descent.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@contextmanager
def new_pg_database(prefix: str = "descent_test") -> Iterator[str]:
    """An empty PostgreSQL database, dropped WITH (FORCE) afterwards; skips the test when no
    server answers at ``PG_ADMIN_URL``."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(exc).splitlines()[0]}")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        reset_engine()  # a test's pooled connections would block the drop without FORCE
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with new_pg_database() as url:
        upgrade(url)
        yield url


def empty_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database of each kind."""
    return database_of_kind(request)


def database_of_kind(request: pytest.FixtureRequest) -> str:
    """The URL of a migrated, empty database of the kind ``request.param`` names."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("pg_url")
    empty_tables(url)
    return url


def _reset_caches() -> None:
    get_settings.cache_clear()
    reset_engine()
    from services import doorbell, jobs, metrics_db, queue

    metrics_db.forget()
    queue.reset_sender()
    doorbell.forget()
    jobs.forget_datasets()


@pytest.fixture
def configured(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("DESCENT_DATABASE_URL", db_url)
    monkeypatch.setenv("DESCENT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DESCENT_BROKER_URL", raising=False)
    _reset_caches()
    yield get_settings()
    _reset_caches()
