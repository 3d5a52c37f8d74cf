"""Our own Redis and PostgreSQL servers, on free ports, for the faults that stop them.

The machine's own Redis (6379) and PostgreSQL (5432) serve other test runs: a chaos case never
restarts, kills or flushes them. These servers live in temporary folders and die with the case
(Redis) or the session (PostgreSQL).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import create_engine, text
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from services.db.migrate import upgrade
from tests.e2e.conftest import free_port


def server_env() -> dict[str, str]:
    """Without DESCENT_*: a server started during a case must not look like one of the case's
    own processes (``kill_leftovers`` kills whatever carries the case's DESCENT_HOME)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DESCENT_")}


@dataclass
class RedisServer:
    """``redis-server`` without persistence: a restart loses every message, as a flush does."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no", "--dir", str(self.folder)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        for attempt in Retrying(stop=stop_after_delay(10), wait=wait_fixed(0.05), reraise=True,
                                retry=retry_if_exception_type(redis.RedisError)):
            with attempt:
                client.ping()
        client.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL: gone at once; SIGTERM: Redis's own orderly shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill(signal.SIGTERM)
        self.start()

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


@dataclass
class PostgresCluster:
    """A throwaway cluster (initdb, trust auth) run as the ``postgres`` user: PostgreSQL refuses
    to run as root. Restarting or stopping it disturbs nobody else."""

    bindir: Path
    folder: Path
    port: int = field(default_factory=free_port)

    @classmethod
    def find_bindir(cls) -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        if not found or shutil.which("runuser") is None:
            return None
        try:
            subprocess.run(["id", "postgres"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            return None
        return Path(found[-1]).parent

    @classmethod
    def create(cls, bindir: Path) -> "PostgresCluster":
        folder = Path(tempfile.mkdtemp(prefix="descent-chaos-pg-"))
        shutil.chown(folder, "postgres", "postgres")
        cluster = cls(bindir, folder)
        cluster._as_postgres("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres", "--no-sync")
        return cluster

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / tool), *args], check=True,
                       capture_output=True, timeout=60, env=server_env())

    def start(self) -> None:
        options = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "postgres.log"),
                          "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """fast: sessions are cut off (what a restart does to the workers' connections)."""
        self._as_postgres("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def new_database(self) -> str:
        """A fresh database on this cluster, migrated to head."""
        name = f"descent_chaos_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        url = self.admin_url.rsplit("/", 1)[0] + f"/{name}"
        upgrade(url)
        return url

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)
