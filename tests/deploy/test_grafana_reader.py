"""The read-only role Grafana's PostgreSQL datasource logs in as, made by the very init script
compose mounts into the postgres service (deploy/postgres/initdb), on this machine's PostgreSQL.

As in compose on an empty volume: the script runs first (as the owner, POSTGRES_USER), then the
migrations make the tables; default privileges must cover them. Then every dashboard SQL query
runs as the role and returns rows, and every kind of write is refused by privileges (not only by
the role's read-only default, which a session may switch off).

Nothing else on the server is touched: a scratch database, dropped afterwards, and a role of a
name of its own, dropped after the database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import ProgrammingError

from services.db.migrate import upgrade
from tests.conftest import PG_ADMIN_URL, new_pg_database
from tests.deploy.compose import ROOT, SERVICES
from tests.deploy.dashboards import SAMPLE_JOBS, SAMPLE_SWEEP, insert_sample_rows, sql_queries

pytestmark = pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")

INITDB = "/docker-entrypoint-initdb.d"


def init_scripts() -> list[Path]:
    """What the postgres image runs at the database's creation, in its order (file name)."""
    source, _ = next(entry.split(":")[:2] for entry in SERVICES["postgres"]["volumes"]
                     if entry.split(":")[1] == INITDB)
    scripts = sorted((ROOT / source).iterdir())
    assert scripts and all(p.suffix == ".sh" for p in scripts), scripts
    return scripts


@dataclass
class Reader:
    owner_url: str
    url: str  # the role's own login
    run_init: Callable[[], None]  # runs the init scripts as the postgres image does


@pytest.fixture
def reader() -> Iterator[Reader]:
    role, password = f"descent_reader_{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with new_pg_database("descent_reader") as owner_url:
            url = make_url(owner_url)

            def run_init() -> None:
                env = {"PATH": os.environ["PATH"], "PGHOST": url.host or "127.0.0.1", "PGPORT": str(url.port or 5432),
                       "POSTGRES_USER": url.username, "POSTGRES_DB": url.database,
                       "GRAFANA_DB_USER": role, "GRAFANA_DB_PASSWORD": password}
                if url.password:
                    env["PGPASSWORD"] = url.password
                for script in init_scripts():
                    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
                    assert done.returncode == 0, f"{script.name}: {done.stdout}{done.stderr}"

            yield Reader(owner_url, url.set(username=role, password=password).render_as_string(hide_password=False),
                         run_init)
    finally:
        with admin.connect() as conn:  # its grants lived in the dropped database; the role is global
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


WRITES = [
    "DELETE FROM jobs",
    "UPDATE jobs SET status = 'cancelled'",
    "INSERT INTO sweeps (id, name, spec, paths, members, planned_steps, cancelled, created_at) "
    "VALUES ('x', 'x', '{}', '[]', 1, 1, false, now())",
    "TRUNCATE history_chunks",
    "DROP TABLE jobs",
    "ALTER TABLE jobs ADD COLUMN x int",
    "CREATE TABLE public.grafana_was_here (x int)",
    "CREATE SCHEMA grafana",
]
# Every privilege a table has but SELECT.
OTHER_PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def test_the_reader_runs_every_dashboard_query_and_cannot_write(reader: Reader) -> None:
    reader.run_init()  # an empty database: compose's order, the init script before the migrations
    upgrade(reader.owner_url)
    owner = create_engine(reader.owner_url)
    role = create_engine(reader.url)
    try:
        with owner.begin() as conn:
            insert_sample_rows(conn)
        with role.connect() as conn:
            for where, sql in sql_queries({"sweep": SAMPLE_SWEEP, "job": SAMPLE_JOBS[0]}):
                assert conn.execute(text(sql)).all(), f"{where} returned no rows as the reader:\n{sql}"
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "30s"
            settings = conn.execute(text("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles "
                                         "WHERE rolname = current_user")).one()
            assert not any(settings)
            tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
            assert {"jobs", "sweeps", "history_chunks"} <= set(tables)
            for table in tables:  # SELECT on each (the migrations' tables, made after the role), and only that
                granted = {privilege: conn.execute(text("SELECT has_table_privilege(:t, :p)"),
                                                   {"t": f"public.{table}", "p": privilege}).scalar()
                           for privilege in ("SELECT", *OTHER_PRIVILEGES)}
                assert granted == {"SELECT": True} | dict.fromkeys(OTHER_PRIVILEGES, False), (table, granted)
            conn.rollback()
        for sql in WRITES:
            with role.connect() as conn:
                # Privileges refuse it, not just the read-only default a session can switch off.
                conn.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"))
                conn.commit()  # the next transaction is read-write
                assert conn.execute(text("SHOW transaction_read_only")).scalar() == "off"
                with pytest.raises(ProgrammingError) as refused:
                    conn.execute(text(sql))
                assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege), (sql, refused.value)
                conn.rollback()
        with owner.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == len(SAMPLE_JOBS)
    finally:
        role.dispose()
        owner.dispose()


def test_the_init_script_runs_again_on_an_existing_database(reader: Reader) -> None:
    """For a volume made before the script existed (or a new password): the tables exist, the
    role may not; running it then (twice, even) grants the reader what it needs."""
    upgrade(reader.owner_url)
    reader.run_init()
    reader.run_init()
    role = create_engine(reader.url)
    try:
        with role.connect() as conn:
            for where, sql in sql_queries():
                conn.execute(text(sql)).all()  # no rows in an empty database, but no refusal
        with role.connect() as conn:
            conn.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"))
            conn.commit()
            with pytest.raises(ProgrammingError) as refused:
                conn.execute(text("DELETE FROM jobs"))
            assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege), refused.value
    finally:
        role.dispose()
