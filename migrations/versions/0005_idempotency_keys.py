"""Idempotency keys: a retried create (POST /v1/jobs, /v1/sweeps, /v1/datasets) with the same
``Idempotency-Key`` answers with the resource the first request made instead of a second one.

Revision ID: 0005_idempotency_keys
Revises: 0004_job_max_steps
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_idempotency_keys"
down_revision: str | None = "0004_job_max_steps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(16), nullable=False),
        sa.Column("resource_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
