"""The schema comes only from the migrations, and it is the schema the models describe."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from services.db import arrays, repository
from services.db.migrate import alembic_config, upgrade
from services.db.models import Base

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"alembic_version", "datasets", "jobs", "checkpoints", "history_chunks",
          "sweeps", "scheduler_leases", "workers", "idempotency_keys"}
HEAD = "0008_idempotency_key_expiry"


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
            assert {n.split(".")[0] for n in names} <= {"__future__", "sqlalchemy", "alembic", "json", "math", "struct"}, path


OLD_ARRAYS = {"parameters/layers.0.weight": np.array([[3.34], [-3.53]]), "step": np.array(2, dtype=np.int64),
              "ssr": np.array(0.25), "stop_reason": np.array(0, dtype=np.int8)}
OLD_HISTORY = [20.4, float("nan"), 0.25]


def _store_at_0001(url: str) -> None:
    """A job with one checkpoint (a row per array) and one JSON history chunk, as 0001 stored them."""
    now = "2026-01-01 00:00:00"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO datasets VALUES ('d', 'h', 3, 1, 1, 'float64', x'', x'', :t)"), {"t": now})
        conn.execute(text(
            "INSERT INTO jobs (id, name, spec, dataset_id, device, status, step, attempts, cancel_requested, created_at)"
            " VALUES ('j', 'old', '{}', 'd', 'cpu', 'succeeded', 2, 1, 0, :t)"), {"t": now})
        conn.execute(text("INSERT INTO checkpoints VALUES ('j', 2, 1, :t)"), {"t": now})
        for name, value in OLD_ARRAYS.items():
            dtype, shape, data = arrays.encode(value)
            conn.execute(text("INSERT INTO checkpoint_arrays VALUES ('j', 2, :n, :d, :s, :b)"),
                         {"n": name, "d": dtype, "s": json.dumps(shape), "b": data})
        conn.execute(text("INSERT INTO history_chunks VALUES ('j', 0, :v)"), {"v": json.dumps(OLD_HISTORY)})
    engine.dispose()


def test_upgrade_keeps_checkpoints_and_history_stored_by_0001(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001_initial")
    _store_at_0001(url)
    command.upgrade(alembic_config(url), "head")
    engine = create_engine(url)
    with Session(engine) as session:
        step, stored = repository.load_checkpoint_arrays(session, "j")
        steps, ssr = repository.read_history(session, "j", 2)
    engine.dispose()
    assert step == 2 and stored.keys() == OLD_ARRAYS.keys()
    assert all(np.array_equal(stored[k], v) and stored[k].dtype == v.dtype for k, v in OLD_ARRAYS.items())
    assert steps.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(ssr, OLD_HISTORY)
    command.downgrade(alembic_config(url), "0002_scheduler_and_sweeps")  # and back, data kept
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM checkpoint_arrays")).scalar() == len(OLD_ARRAYS)
        assert len(json.loads(conn.execute(text("SELECT ssr FROM history_chunks")).scalar())) == 3
    engine.dispose()


def test_0004_fills_max_steps_from_each_stored_spec(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003_compact_checkpoints")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO datasets VALUES ('d', 'h', 3, 1, 1, 'float64', x'', x'', '2026-01-01')"))
        for job_id, steps in (("a", 77), ("b", 1000)):
            conn.execute(text(
                "INSERT INTO jobs (id, name, spec, dataset_id, device, status, step, attempts, cancel_requested,"
                " created_at, pack_key, cost, lost_leases) VALUES (:id, 'old', :spec, 'd', 'cpu', 'queued', 0, 0, 0,"
                " '2026-01-01', '', 1, 0)"), {"id": job_id, "spec": json.dumps({"stop": {"max_steps": steps}})})
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        filled = dict(conn.execute(text("SELECT id, max_steps FROM jobs")).all())
    engine.dispose()
    assert filled == {"a": 77, "b": 1000}


def test_0006_gives_old_rows_the_default_tenant_and_keeps_idempotency_keys(db_url: str) -> None:
    """On both databases: rows of one tenant before, every one the default tenant's after, the
    keys in use still answering, and the same data storable by two tenants."""
    engine = create_engine(db_url)
    command.downgrade(alembic_config(db_url), "0005_idempotency_keys")  # the fixture's is at head
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO datasets (id, content_hash, n_points, n_in, n_out, dtype, x, y, created_at)"
                          " VALUES ('d', 'h', 3, 1, 1, 'float64', :b, :b, :t)"), {"b": b"", "t": "2026-01-01"})
        conn.execute(text("INSERT INTO sweeps (id, name, spec, paths, members, planned_steps, cancelled, created_at)"
                          " VALUES ('s', 'old', '{}', '[]', 0, 0, false, '2026-01-01')"))
        conn.execute(text("INSERT INTO idempotency_keys VALUES ('k', 'hash', 'dataset', 'd', '2026-01-01')"))
    command.upgrade(alembic_config(db_url), "head")
    with engine.begin() as conn:
        for table in ("datasets", "sweeps", "idempotency_keys"):
            assert conn.execute(text(f"SELECT tenant_id FROM {table}")).scalars().all() == ["default"], table
        assert conn.execute(text("SELECT resource_id FROM idempotency_keys WHERE key = 'k'")).scalar() == "d"
        conn.execute(text("INSERT INTO datasets (id, tenant_id, content_hash, n_points, n_in, n_out, dtype, x, y,"
                          " created_at) VALUES ('d2', 'bob', 'h', 3, 1, 1, 'float64', :b, :b, :t)"),
                     {"b": b"", "t": "2026-01-01"})
        conn.execute(text("INSERT INTO idempotency_keys (tenant_id, key, request_hash, resource, resource_id,"
                          " created_at) VALUES ('bob', 'k', 'other', 'dataset', 'd2', '2026-01-01')"))
    engine.dispose()


def test_0007_sweep_indexes_hold_members_only_and_sweep_lookups_still_use_them(db_url: str) -> None:
    """On both databases: the two sweep indexes carry ``sweep_id IS NOT NULL`` (an independent
    job's writes skip them), and the lookups by sweep (listing, metrics scrape) are still
    planned on them."""
    engine = create_engine(db_url)
    partial = {index["name"]: index.get("dialect_options", {}) for index in inspect(engine).get_indexes("jobs")}
    lookups = {
        "ix_jobs_sweep_created": "SELECT id FROM jobs WHERE sweep_id = 's' ORDER BY created_at DESC, id DESC",
        "ix_jobs_sweep_ssr": "SELECT sweep_id, count(*), min(ssr) FROM jobs WHERE sweep_id IN ('s', 't')"
                             " GROUP BY sweep_id",
    }
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))  # an empty table: make the planner show its index
        explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        plans = {name: " ".join(str(row[-1]) for row in conn.execute(text(explain + query)))
                 for name, query in lookups.items()}
    engine.dispose()
    for name in lookups:
        where = partial[name].get(f"{engine.dialect.name}_where")
        assert where is not None and "sweep_id IS NOT NULL" in str(where).replace("(", "").replace(")", ""), name
        assert name in plans[name], plans[name]


def test_a_database_a_newer_descent_migrated_is_refused_with_a_clear_message(db_url: str, configured) -> None:
    """A rollback of the code after a migration: ``descent db upgrade`` (compose's ``migrate``,
    ``descent up``) printed Alembic's "Can't locate revision" under a 260-line traceback; now one
    line says the database is newer than this Descent. ``schema_problem`` (/readyz) names a
    schema behind the code, and lets one ahead of it be."""
    from typer.testing import CliRunner

    from services.cli import app

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    try:
        result = CliRunner().invoke(app, ["db", "upgrade"])  # the configured database: db_url
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.startswith("error: the database schema is at revision 9999_from_the_future")
        assert "newer Descent" in result.output

        from services.db.migrate import SchemaTooNew, schema_problem

        with pytest.raises(SchemaTooNew, match="9999_from_the_future.*newer Descent"):
            upgrade(db_url)
        with engine.connect() as conn:
            assert schema_problem(conn) is None  # older processes serve on in a rolling upgrade
    finally:  # the PostgreSQL database is shared by the session's tests
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": HEAD})
    command.downgrade(alembic_config(db_url), "-1")
    try:
        with engine.connect() as conn:
            assert "descent db upgrade" in schema_problem(conn)
    finally:
        upgrade(db_url)
    with engine.connect() as conn:
        assert schema_problem(conn) is None
    engine.dispose()
