"""Expired idempotency keys are deleted: the scheduler's maintenance removes keys older than
their lifetime (``idempotency_key_ttl``, 24 h), which before were only treated as absent and
kept for ever. This index makes that lookup (``created_at < :expired``) a range scan instead of
a scan of the whole table every maintenance pass.

Revision ID: 0008_idempotency_key_expiry
Revises: 0007_partial_sweep_indexes
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision: str = "0008_idempotency_key_expiry"
down_revision: str | None = "0007_partial_sweep_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created", table_name="idempotency_keys")
