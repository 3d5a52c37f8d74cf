"""Initial schema: datasets, jobs, checkpoints, checkpoint arrays, history chunks.

The tables are written out here rather than imported from the models: a migration must keep
meaning what it meant when it was written, whatever the models become later.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels = None
depends_on = None

# PostgreSQL keeps history as float8[] and specs as JSONB; SQLite keeps JSON text.
SSR_ARRAY = sa.JSON().with_variant(postgresql.ARRAY(sa.Float(precision=53)), "postgresql")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
DOUBLE = sa.Float(precision=53)
STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("n_points", sa.Integer, nullable=False),
        sa.Column("n_in", sa.Integer, nullable=False),
        sa.Column("n_out", sa.Integer, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("x", sa.LargeBinary, nullable=False),
        sa.Column("y", sa.LargeBinary, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
    )
    create_jobs()
    op.create_table(
        "checkpoints",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "checkpoint_arrays",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id", "step"], ["checkpoints.job_id", "checkpoints.step"], ondelete="CASCADE"
        ),
    )
    op.create_table(
        "history_chunks",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("first_step", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("ssr", SSR_ARRAY, nullable=False),
    )


def create_jobs() -> None:
    """Jobs carry their summary (step, ssr, best_ssr) so listings never read the history."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sweep_id", sa.String(36), nullable=True),
        sa.Column("spec", JSON_DOC, nullable=False),
        sa.Column("dataset_id", sa.String(36), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("device", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("ssr", DOUBLE, nullable=True),
        sa.Column("best_ssr", DOUBLE, nullable=True),
        sa.Column("stop_reason", sa.String(32), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker_hostname", sa.String(255), nullable=True),
        sa.Column("worker_pid", sa.Integer, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("started_at", STAMP, nullable=True),
        sa.Column("finished_at", STAMP, nullable=True),
        sa.Column("heartbeat_at", STAMP, nullable=True),
        sa.Column("dispatched_at", STAMP, nullable=True),
    )
    op.create_index("ix_jobs_created", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_jobs_sweep_created", "jobs", ["sweep_id", "created_at", "id"])


def downgrade() -> None:
    for table in ("history_chunks", "checkpoint_arrays", "checkpoints", "jobs", "datasets"):
        op.drop_table(table)
