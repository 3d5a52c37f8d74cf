"""The schema comes only from the migrations, and it is the schema the models describe."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.db.migrate import alembic_config, upgrade
from services.db.models import Base

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"alembic_version", "datasets", "jobs", "checkpoints", "checkpoint_arrays", "history_chunks",
          "sweeps", "scheduler_leases", "workers"}
HEAD = "0002_scheduler_and_sweeps"


def schema_of(url: str) -> tuple[set[str], str | None, list]:
    """Tables, alembic revision, and the differences between the database and the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            tables = set(inspect(conn).get_table_names())
            return tables, context.get_current_revision(), compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    tables, revision, diffs = schema_of(db_url)
    assert tables == TABLES
    assert revision == HEAD
    assert diffs == []


def test_upgrade_makes_a_fresh_sqlite_file_from_the_settings(tmp_path: Path, monkeypatch) -> None:
    """``descent db upgrade`` on a new install: no folder yet, run from an unrelated cwd."""
    from services.config import get_settings

    home = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("DESCENT_HOME", str(home))
    monkeypatch.delenv("DESCENT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        upgrade()
    finally:
        get_settings.cache_clear()
    tables, revision, diffs = schema_of(f"sqlite:///{home / 'descent.db'}")
    assert (tables, revision, diffs) == (TABLES, HEAD, [])


def test_alembic_command_line_from_the_repository_root(tmp_path: Path) -> None:
    """``alembic upgrade head`` reads the URL from DESCENT_DATABASE_URL, not from alembic.ini."""
    path = tmp_path / "cli" / "descent.db"
    env = {**os.environ, "DESCENT_DATABASE_URL": f"sqlite:///{path}"}
    result = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert schema_of(f"sqlite:///{path}")[:2] == (TABLES, HEAD)


def test_downgrade_to_base_and_back(sqlite_url: str) -> None:
    config = alembic_config(sqlite_url)
    command.downgrade(config, "base")
    assert schema_of(sqlite_url)[0] == {"alembic_version"}
    command.upgrade(config, "head")
    assert schema_of(sqlite_url)[:3] == (TABLES, HEAD, [])


def test_revisions_import_only_sqlalchemy_and_alembic() -> None:
    """A revision keeps meaning what it meant when written: no application imports."""
    for path in (ROOT / "migrations" / "versions").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert {n.split(".")[0] for n in names} <= {"__future__", "sqlalchemy", "alembic"}, path
