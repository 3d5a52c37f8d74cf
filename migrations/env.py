"""Alembic environment. Imports only SQLAlchemy and Alembic (and the settings, for the URL).

The URL comes from ``sqlalchemy.url`` when a caller set one on the config (tests, ``descent db
upgrade --url``), otherwise from ``services.config.get_settings().database_url``, so
``alembic upgrade head`` needs no URL in ``alembic.ini``. Revisions are written by hand with
readable ids: ``alembic revision -m "add x" --rev-id 0002_add_x``.
"""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, make_url, pool, text

# Two processes upgrading one PostgreSQL database at once (API and worker starting together)
# queue on this lock instead of racing to create the same tables.
_PG_LOCK_KEY = 0x0DE5CE47


def database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from services.config import get_settings

    return get_settings().database_url


def ensure_sqlite_folder(url: str) -> None:
    """A fresh install points at ``$DESCENT_HOME/descent.db``; SQLite will not make the folder."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database:
        return
    if database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def run_offline(url: str) -> None:
    context.configure(url=url, target_metadata=None, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online(url: str) -> None:
    ensure_sqlite_folder(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            is_sqlite = connection.dialect.name == "sqlite"
            # Batch mode lets later revisions ALTER tables on SQLite (copy-and-move).
            context.configure(connection=connection, target_metadata=None, render_as_batch=is_sqlite)
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                context.run_migrations()
    finally:
        engine.dispose()


if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline(database_url())
else:
    run_online(database_url())
