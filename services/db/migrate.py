"""Programmatic ``alembic upgrade head``, so ``descent db upgrade`` works from any folder.

The script location comes from the installed ``migrations`` package, not from ``alembic.ini``
in the current directory (which an installed service does not have).
"""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config


def alembic_config(url: str | None = None) -> Config:
    """A config without an ini file; with ``url`` None, migrations/env.py reads the settings."""
    config = Config()
    config.set_main_option("script_location", str(files("migrations")))
    if url:
        # The config is a ConfigParser: a literal '%' (URL-encoded password) must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None) -> None:
    """Bring the database at ``url`` (default: the configured one) to the newest revision."""
    command.upgrade(alembic_config(url), "head")
