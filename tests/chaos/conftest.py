"""Chaos cases (issue "Nothing lost under faults"): real processes, real faults.

Each case starts its own processes (``make_stack``) on one of the two deployments:

- ``embedded``: SQLite file + the filesystem broker folder (what ``descent up`` runs);
- ``production``: PostgreSQL (a fresh database on the machine's server, emptied per case) +
  Redis (our own ``redis-server`` on a free port, never the machine's). The cases that stop a
  server use their own: a ``redis-server`` per case, a PostgreSQL cluster per session.

The cases take minutes in all and run apart: ``make chaos`` (``pytest -m chaos tests/chaos``;
pyproject's addopts deselect them otherwise). Every case prints its time to recover in a section at
the end of the run (and records it as the ``recovery_seconds`` property for JUnit XML).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import empty_tables
from tests.worker.conftest import environment

from .harness import FAST, ChaosStack
from .servers import PostgresCluster, RedisServer

RECOVERIES = pytest.StashKey[list[tuple[str, float, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault injection with real processes (make chaos; minutes)")
    config.stash[RECOVERIES] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(RECOVERIES, [])
    if rows:
        terminalreporter.section("chaos: time to recover")
        for nodeid, seconds, what in rows:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid.split('::', 1)[-1]}  {what}")


@pytest.fixture
def recovery(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> Callable[..., None]:
    """``recovery(seconds, what)``: report how long the system took to recover from the fault."""
    def note(seconds: float, what: str = "") -> None:
        record_property("recovery_seconds", round(seconds, 2))
        request.config.stash[RECOVERIES].append((request.node.nodeid, seconds, what))
    return note


@pytest.fixture(params=["embedded", "production"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server of ours for the cases that do not break Redis (flushed per case)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """Our own PostgreSQL cluster on a free port, for the cases that restart PostgreSQL."""
    bindir = PostgresCluster.find_bindir()
    if bindir is None:
        pytest.skip("no /usr/lib/postgresql/*/bin/initdb, runuser or postgres user: cannot run a cluster of our own")
    cluster = PostgresCluster.create(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def make_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., ChaosStack]]:
    """``make_stack(kind, workers=1, schedulers=1, database_url=None, redis=None, **settings)``:
    a fresh database and broker, the workers and schedulers started and announced. ``settings``
    are Settings fields (``lease_seconds=30``) over the short leases of ``FAST``."""
    exits = ExitStack()
    stacks: list[ChaosStack] = []

    def make(kind: str, workers: int = 1, schedulers: int = 1, database_url: str | None = None,
             redis: RedisServer | None = None, **settings: object) -> ChaosStack:
        folder = tmp_path / f"stack{len(stacks)}"
        home = folder / "home"
        home.mkdir(parents=True)
        env = FAST | {f"DESCENT_{k.upper()}": str(v) for k, v in settings.items()} | {"DESCENT_HOME": str(home)}
        if kind == "embedded":
            env |= {"DESCENT_DATABASE_URL": database_url or request.getfixturevalue("sqlite_url"),
                    "DESCENT_BROKER_URL": "filesystem://"}
        else:
            if database_url is None:
                database_url = request.getfixturevalue("pg_url")
                empty_tables(database_url)
            if redis is None:
                redis = request.getfixturevalue("own_redis")
                redis.flush()
            env |= {"DESCENT_DATABASE_URL": database_url, "DESCENT_BROKER_URL": redis.url}
        exits.enter_context(environment(env))
        stack = ChaosStack(kind, env, folder)
        stacks.append(stack)
        for _ in range(workers):
            stack.add_worker()
        for _ in range(schedulers):
            stack.add_scheduler()
        if workers:
            stack.wait_workers(workers)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()
        exits.close()
