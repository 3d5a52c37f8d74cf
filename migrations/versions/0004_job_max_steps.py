"""What the metrics scrape reads, made cheap: each job's planned steps as a column (a sweep's
progress is one SQL sum, not a JSON read of every member's spec), and two covering indexes so
per-sweep counts, medians and the queue depth are index-only scans.

Revision ID: 0004_job_max_steps
Revises: 0003_compact_checkpoints
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_job_max_steps"
down_revision: str | None = "0003_compact_checkpoints"
branch_labels = None
depends_on = None

_FROM_SPEC = {
    "postgresql": "UPDATE jobs SET max_steps = (spec -> 'stop' ->> 'max_steps')::integer",
    "sqlite": "UPDATE jobs SET max_steps = CAST(json_extract(spec, '$.stop.max_steps') AS INTEGER)",
}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("max_steps", sa.Integer, nullable=True))
    op.execute(_FROM_SPEC[op.get_bind().dialect.name])
    op.create_index("ix_jobs_sweep_ssr", "jobs", ["sweep_id", "ssr", "status", "step", "max_steps"])
    op.create_index("ix_jobs_waiting", "jobs", ["status", "device", "rung", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_waiting", "jobs")
    op.drop_index("ix_jobs_sweep_ssr", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("max_steps")
