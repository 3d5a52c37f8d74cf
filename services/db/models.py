"""The one set of SQLAlchemy models. The schema itself is made only by Alembic migrations."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Dialect, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
    UniqueConstraint, text,
)
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonDoc = JSON().with_variant(JSONB(), "postgresql")


_MEMBERS_ONLY = {dialect + "_where": text("sweep_id IS NOT NULL") for dialect in ("sqlite", "postgresql")}


class SsrArray(TypeDecorator):
    """History values: float8[] on PostgreSQL (Grafana can unnest it), raw little-endian
    float64 bytes on SQLite (no JSON encoding on the hot write path). Reads give float64 arrays;
    NaN and infinities are kept on both."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(Float(precision=53)))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: object, dialect: Dialect) -> object:
        if value is None:
            return None
        values = np.asarray(value, dtype=np.float64).reshape(-1)
        return values.tolist() if dialect.name == "postgresql" else values.astype("<f8").tobytes()

    def process_result_value(self, value: object, dialect: Dialect) -> np.ndarray | None:
        if value is None:
            return None
        if isinstance(value, (bytes, memoryview)):
            return np.frombuffer(value, dtype="<f8").astype(np.float64)
        return np.asarray(value, dtype=np.float64)  # None (SQL NULL element) -> NaN


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


# Every job, sweep, dataset and idempotency key belongs to one tenant (the owner of the API key
# that made it; ``default`` when auth is off). Reads filter on it, so another tenant's id is 404.
DEFAULT_TENANT = "default"


def tenant_column() -> Mapped[str]:
    return mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)


class Dataset(Base):
    """Training data, stored once per tenant and content hash and shared by that tenant's jobs
    (never across tenants: a shared row would tell one tenant what another uploaded)."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = tenant_column()
    content_hash: Mapped[str] = mapped_column(String(64))
    n_points: Mapped[int] = mapped_column(Integer)
    n_in: Mapped[int] = mapped_column(Integer)
    n_out: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    x: Mapped[bytes] = mapped_column(LargeBinary)
    y: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("tenant_id", "content_hash", name="uq_datasets_tenant_hash"),)


class Job(Base):
    """A job row carries its summary (step, ssr, best_ssr) so listings never touch history."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = tenant_column()
    name: Mapped[str] = mapped_column(String(200))
    sweep_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    spec: Mapped[dict] = mapped_column(JsonDoc)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    device: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    step: Mapped[int] = mapped_column(Integer, default=0)
    max_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the spec's stop.max_steps
    ssr: Mapped[float | None] = mapped_column(Float(precision=53), nullable=True)
    best_ssr: Mapped[float | None] = mapped_column(Float(precision=53), nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_hostname: Mapped[str | None] = mapped_column(String(255), nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Scheduling: jobs with one pack_key can share an engine pack; cost sizes the packs.
    pack_key: Mapped[str] = mapped_column(String(64), default="")
    cost: Mapped[float] = mapped_column(Float(precision=53), default=1.0)
    # A sweep member's varied values ({dotted path: value}); NULL for an independent job.
    sweep_values: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Successive halving: the rung step a parked member waits at for the sweep's cut.
    rung: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Claims that ended with an expired lease (worker killed, paused, partitioned).
    lost_leases: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        # Sweep members only (migration 0007): an independent job's writes skip both.
        Index("ix_jobs_sweep_created", "sweep_id", "created_at", "id", **_MEMBERS_ONLY),
        # The metrics scrape (services/db/gauges.py) reads these columns alone: index-only scans.
        Index("ix_jobs_sweep_ssr", "sweep_id", "ssr", "status", "step", "max_steps", **_MEMBERS_ONLY),
        Index("ix_jobs_waiting", "status", "device", "rung", "created_at"),
    )


class Checkpoint(Base):
    """One saved training state: its raw arrays concatenated in ``data``, described by
    ``manifest`` (``[[name, dtype, shape], ...]`` in order; little-endian, C order). No pickle:
    any language rebuilds the arrays from the manifest. One row per checkpoint keeps the write
    of a pack of thousands to one row per member."""

    __tablename__ = "checkpoints"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    manifest: Mapped[list] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class HistoryChunk(Base):
    """SSR of consecutive steps ``first_step .. first_step + len(ssr) - 1`` of one job.

    Array rows make ingestion cheap (one row per checkpoint, not per step) and stay SQL-readable:
    ``SELECT first_step + i - 1, v FROM history_chunks, unnest(ssr) WITH ORDINALITY u(v, i)``.
    """

    __tablename__ = "history_chunks"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    first_step: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ssr: Mapped[np.ndarray] = mapped_column(SsrArray)


class Sweep(Base):
    """A family of jobs made from one base spec; its status and counts come from its members."""

    __tablename__ = "sweeps"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = tenant_column()
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict] = mapped_column(JsonDoc)
    paths: Mapped[list] = mapped_column(JSON)
    members: Mapped[int] = mapped_column(Integer)
    planned_steps: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_sweeps_tenant_created", "tenant_id", "created_at", "id"),)


class SchedulerLease(Base):
    """One row per role: whoever holds an unexpired lease is the one scheduler that acts."""

    __tablename__ = "scheduler_leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Worker(Base):
    """A worker process that renews its row while alive: the scheduler spreads packs over the
    live ones of each queue, and a row not seen for a lease is a dead worker."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[str] = mapped_column(String(64))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` on a create: a hash of the request it came with and the
    resource that request made, written in the resource's own transaction. Rows older than the
    key lifetime count as absent and are overwritten by the next use of the key, and the
    scheduler deletes them (``forget_expired``). Keys are per tenant: two tenants may use the
    same key (``services/db/idempotency.py`` is the one place that reads and writes these rows)."""

    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True, default=DEFAULT_TENANT,
                                           server_default=DEFAULT_TENANT)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(16))  # "job" | "sweep" | "dataset"
    resource_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_idempotency_keys_created", "created_at"),)
