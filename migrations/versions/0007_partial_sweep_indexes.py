"""The two sweep indexes hold sweep members only: an independent job (``sweep_id`` NULL) is
never looked up by sweep, yet every insert of one, and every update of its SSR, status or step
while it trains, also wrote both indexes. Every query that uses them compares ``sweep_id`` with
a value, which implies ``sweep_id IS NOT NULL``, so SQLite and PostgreSQL still choose them.

Revision ID: 0007_partial_sweep_indexes
Revises: 0006_tenants
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_partial_sweep_indexes"
down_revision: str | None = "0006_tenants"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_jobs_sweep_created": ["sweep_id", "created_at", "id"],
    "ix_jobs_sweep_ssr": ["sweep_id", "ssr", "status", "step", "max_steps"],
}
MEMBERS = sa.text("sweep_id IS NOT NULL")


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.drop_index(name, table_name="jobs")
        op.create_index(name, "jobs", columns, sqlite_where=MEMBERS, postgresql_where=MEMBERS)


def downgrade() -> None:
    for name, columns in INDEXES.items():
        op.drop_index(name, table_name="jobs")
        op.create_index(name, "jobs", columns)
