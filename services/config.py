"""The one settings object. Every knob is a ``DESCENT_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Defaults describe the embedded stack (SQLite + filesystem broker under ``home``);
    production sets ``DESCENT_DATABASE_URL`` and ``DESCENT_BROKER_URL``."""

    model_config = SettingsConfigDict(env_prefix="DESCENT_", extra="ignore")

    home: Path = Path(".descent")
    database_url: str = ""
    broker_url: str = ""
    # How often an idle worker looks for a task on the embedded broker (Redis pushes instead).
    # It is most of the embedded stack's submit -> running time: 50 ms gave a median of 47 ms,
    # 20 ms gives 24 ms (benchmarks/RESULTS.md, eleventh session); each look is one listdir.
    broker_polling_interval: float = Field(default=0.02, gt=0, le=1.0)
    # Training tasks run for a long time: keep Redis from redelivering them mid-run (the
    # scheduler, not the broker, re-dispatches work whose worker died).
    visibility_timeout: int = 12 * 3600
    # Liveness (docs/design.md, "Leases"): a worker renews the lease of every job it holds each
    # heartbeat, whatever the chunk length; a running job whose lease is older than lease_seconds
    # is requeued by the scheduler (its attempt number fences the old worker's writes). With
    # these defaults a job whose worker died resumes from its last checkpoint within ~35 s.
    lease_seconds: int = Field(default=30, ge=3)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    # The scheduler acts on every wake-up (a submit rings its doorbell) and at least this often.
    scheduler_period: float = Field(default=1.0, gt=0)
    # Only the holder of this lease acts; another scheduler takes over when it lapses.
    scheduler_lease_seconds: float = Field(default=10.0, gt=0)
    # A queued job whose message has not started it after this long is published again
    # (broker flushed or restarted, publish failed); a duplicate claims nothing.
    redispatch_seconds: float = Field(default=30.0, gt=0)
    # PostgreSQL: a statement waits at most db_lock_timeout for a row lock, and a session idle
    # inside a transaction for db_idle_transaction_timeout is ended by the server (a stopped
    # worker's open checkpoint transaction then releases its locks; our transactions never idle).
    db_lock_timeout: float = Field(default=10.0, gt=0)
    db_idle_transaction_timeout: float = Field(default=30.0, gt=0)
    # A worker commits the checkpoints of fast chunks together, at most this long after its last
    # commit (and at once when a pack ends or the worker stops): every checkpoint is still stored,
    # but a pack of tiny networks costs one transaction per this period, not one per chunk. A
    # crash loses at most this much training; 0 commits every chunk alone.
    checkpoint_commit_seconds: float = Field(default=1.0, ge=0)
    # Claims that ended with an expired lease before a job is given up as failed.
    max_attempts: int = Field(default=3, ge=1)
    # Packs: members * parameters * points per pack, and members per pack, at most.
    pack_max_cost: float = Field(default=1e8, gt=0)
    pack_max_members: int = Field(default=5000, ge=1)
    # A queue's tiny jobs (their summed cost under pack_linger_cost) wait up to pack_linger_seconds
    # after the oldest was submitted while another pack of the queue trains, so that a stream of
    # submits goes out as a few larger packs; an idle queue sends at once. 0 never waits.
    pack_linger_seconds: float = Field(default=0.05, ge=0)
    pack_linger_cost: float = Field(default=1e6, ge=0)
    # Jobs per read of a queue in a scheduler pass (the rest wait for the next pass); with workers
    # free, a full read is followed by one without the tenants it found (one per free worker at
    # most), so other tenants' jobs are never hidden behind it.
    scheduler_batch: int = Field(default=20_000, ge=1)
    # Queues this worker process serves (set by `descent worker`; read by its heartbeat).
    worker_queues: str = "cpu"
    # Recycle a worker's pool process after this many packs (None: never), e.g. to return memory.
    worker_max_tasks_per_child: int | None = Field(default=None, ge=1)
    # Metrics: a worker or scheduler serves its own on this port (compose); under `descent up`
    # the API's /metrics serves every process's instead. Per-sweep series cover sweeps running or
    # finished within the window, at most max_sweeps of them (newest first).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_sweep_window: float = Field(default=900.0, ge=0)
    metrics_max_sweeps: int = Field(default=100, ge=0)
    # A scrape shows the database as read after the previous scrape, unless that reading is older
    # than this (then it reads the database itself, as every scrape does with 0).
    metrics_max_age: float = Field(default=30.0, ge=0)
    # Array namespace of this process's engine: a worker for the `gpu` queue runs with "cupy".
    engine_backend: Literal["numpy", "cupy"] = "numpy"

    # Request and spec limits: everything a client can make large is capped here.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_points: int = Field(default=100_000, ge=1)
    max_layers: int = Field(default=16, ge=2)
    max_layer_width: int = Field(default=4096, ge=1)
    max_parameters: int = Field(default=2_000_000, ge=1)
    max_steps: int = Field(default=1_000_000, ge=1)
    # Updates between two checkpoints: a worker holds a chunk's SSR history (steps x pack members)
    # in memory until it checkpoints.
    max_checkpoint_every: int = Field(default=10_000, ge=1)
    max_sweep_members: int = Field(default=10_000, ge=1)
    max_list_limit: int = Field(default=500, ge=1)
    max_history_points: int = Field(default=10_000_000, ge=1)
    # How long an Idempotency-Key is remembered: a retry after that makes a new resource.
    idempotency_key_ttl: float = Field(default=86_400.0, gt=0)

    # Auth (api/auth.py): `Authorization: Bearer <key>`. api_keys is "tenant:key,tenant:key" or
    # "key,key" (each key its own tenant); empty turns auth off (one tenant, "default"), which
    # `descent up` allows only on 127.0.0.1. metrics_key opens /metrics (operators, Prometheus);
    # tenants' keys do not.
    api_keys: str = Field(default="", repr=False)
    metrics_key: str = Field(default="", repr=False)
    # Per-tenant limits: jobs waiting (429 at submit), jobs the scheduler lets run at once, and
    # the estimated cost of one job or sweep (parameters x points x steps, summed over members).
    tenant_max_queued: int = Field(default=100_000, ge=1)
    tenant_max_running: int = Field(default=50_000, ge=1)
    tenant_max_cost: float = Field(default=1e13, gt=0)

    @model_validator(mode="after")
    def _fill_embedded_urls(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.home / 'descent.db').absolute()}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the embedded filesystem transport keeps its messages."""
        return (self.home / "broker").absolute()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """Cached so every module sees one object; tests call ``get_settings.cache_clear()``."""
    return Settings()
