"""Scheduler and sweeps: pack keys and costs on jobs, sweep members, rungs, lost leases,
the sweeps table, the scheduler's leader lease and the live workers.

Revision ID: 0002_scheduler_and_sweeps
Revises: 0001_initial
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_scheduler_and_sweeps"
down_revision: str | None = "0001_initial"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
DOUBLE = sa.Float(precision=53)
STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pack_key", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("cost", DOUBLE, nullable=False, server_default="1"))
        batch.add_column(sa.Column("sweep_values", sa.JSON, nullable=True))
        batch.add_column(sa.Column("rung", sa.Integer, nullable=True))
        batch.add_column(sa.Column("lost_leases", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", JSON_DOC, nullable=False),
        sa.Column("paths", sa.JSON, nullable=False),
        sa.Column("members", sa.Integer, nullable=False),
        sa.Column("planned_steps", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("finished_at", STAMP, nullable=True),
    )
    op.create_index("ix_sweeps_created", "sweeps", ["created_at", "id"])
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", STAMP, nullable=False),
        sa.Column("acted_at", STAMP, nullable=True),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("queues", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", STAMP, nullable=False),
        sa.Column("seen_at", STAMP, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("scheduler_leases")
    op.drop_index("ix_sweeps_created", "sweeps")
    op.drop_table("sweeps")
    with op.batch_alter_table("jobs") as batch:
        for column in ("lost_leases", "rung", "sweep_values", "cost", "pack_key"):
            batch.drop_column(column)
