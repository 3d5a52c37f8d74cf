"""Programmatic ``alembic upgrade head``, so ``descent db upgrade`` works from any folder.

The script location comes from the installed ``migrations`` package, not from ``alembic.ini``
in the current directory (which an installed service does not have).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, inspect, pool


class SchemaTooNew(Exception):
    """The database is at a revision this code does not have: a newer Descent migrated it."""


def alembic_config(url: str | None = None) -> Config:
    """A config without an ini file; with ``url`` None, migrations/env.py reads the settings."""
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    if url:
        # The config is a ConfigParser: a literal '%' (URL-encoded password) must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None) -> None:
    """Bring the database at ``url`` (default: the configured one) to the newest revision.

    A database a newer Descent migrated (a rollback of the code) is refused with ``SchemaTooNew``
    saying so, not with Alembic's "Can't locate revision" and its traceback."""
    try:
        command.upgrade(alembic_config(url), "head")
    except CommandError as exc:
        newer = _unknown_revisions(url)
        if newer:
            raise SchemaTooNew(too_new_message(newer)) from exc
        raise


@lru_cache
def _scripts() -> ScriptDirectory:
    """This code's migrations (read from the package once per process)."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code has (the migrations have one head)."""
    return _scripts().get_current_head()


@lru_cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def too_new_message(revisions: set[str]) -> str:
    """What to do about a schema this code cannot read: Alembic's "Can't locate revision" says
    neither that a newer Descent made it nor which version to run."""
    return (f"the database schema is at revision {', '.join(sorted(revisions))}, which this version of Descent "
            f"does not have (its newest is {head_revision()}): a newer Descent migrated it; run that version")


def schema_problem(connection: Connection) -> str | None:
    """Why this code cannot rely on the database's schema: it is not migrated, or behind this
    code's head. A process started on such a database otherwise answers every request with a
    503 "retry later" that no retry fixes (the queries name columns the tables lack). A schema
    a newer Descent migrated is no problem here: in a rolling upgrade the migration runs while
    the older processes still serve (``upgrade`` is what refuses to run on it)."""
    if not inspect(connection).has_table("alembic_version"):
        return "the database schema is not migrated: run `descent db upgrade`"
    found = set(MigrationContext.configure(connection).get_current_heads())
    if found == {head_revision()} or found - _known_revisions():
        return None
    return (f"the database schema is at revision {', '.join(sorted(found)) or 'none'}, this version of Descent "
            f"needs {head_revision()}: run `descent db upgrade`")


def _unknown_revisions(url: str | None) -> set[str]:
    """Revisions the database is at that these migrations do not have (empty if it cannot tell)."""
    if url is None:
        from services.config import get_settings

        url = get_settings().database_url
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads()) - _known_revisions()
    except Exception:  # noqa: BLE001 (the caller re-raises Alembic's own error instead)
        return set()
    finally:
        engine.dispose()
