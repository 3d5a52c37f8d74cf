"""Tenants: every dataset, job, sweep and idempotency key belongs to the tenant whose API key
made it. Existing rows go to the tenant ``default`` (the one tenant when auth is off).

Datasets are de-duplicated per tenant now (unique tenant + content hash), listings are indexed
by tenant first, and idempotency keys are unique per tenant (the table is copied, so keys in
use survive the upgrade).

Revision ID: 0006_tenants
Revises: 0005_idempotency_keys
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006_tenants"
down_revision: str | None = "0005_idempotency_keys"
branch_labels = None
depends_on = None

DEFAULT = "default"
# SQLite's inline UNIQUE of 0001 has no name; this convention names it for batch mode.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _tenant() -> sa.Column:
    return sa.Column("tenant_id", sa.String(64), nullable=False, server_default=DEFAULT)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in ("jobs", "sweeps"):
        op.add_column(table, _tenant())
    with op.batch_alter_table("datasets", naming_convention=_NAMING) as batch:
        batch.add_column(_tenant())
        batch.drop_constraint("uq_datasets_content_hash" if sqlite else "datasets_content_hash_key", type_="unique")
        batch.create_unique_constraint("uq_datasets_tenant_hash", ["tenant_id", "content_hash"])
    op.drop_index("ix_jobs_created", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.drop_index("ix_sweeps_created", table_name="sweeps")
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at", "id"])
    op.create_index("ix_jobs_tenant_status_created", "jobs", ["tenant_id", "status", "created_at", "id"])
    op.create_index("ix_sweeps_tenant_created", "sweeps", ["tenant_id", "created_at", "id"])
    _rekey_idempotency()


def _rekey_idempotency() -> None:
    op.create_table(
        "idempotency_keys_new",
        sa.Column("tenant_id", sa.String(64), primary_key=True, server_default=DEFAULT),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(16), nullable=False),
        sa.Column("resource_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute("INSERT INTO idempotency_keys_new (tenant_id, key, request_hash, resource, resource_id, created_at) "
               f"SELECT '{DEFAULT}', key, request_hash, resource, resource_id, created_at FROM idempotency_keys")
    op.drop_table("idempotency_keys")
    op.rename_table("idempotency_keys_new", "idempotency_keys")
    if op.get_bind().dialect.name == "postgresql":  # the primary key's index keeps the old table's name
        op.execute("ALTER INDEX idempotency_keys_new_pkey RENAME TO idempotency_keys_pkey")


def downgrade() -> None:
    """Back to one tenant: only possible while every row is the default tenant's."""
    bind = op.get_bind()
    for table in ("jobs", "sweeps", "datasets", "idempotency_keys"):
        others = bind.execute(sa.text(f"SELECT count(*) FROM {table} WHERE tenant_id <> :t"), {"t": DEFAULT}).scalar()
        if others:
            raise RuntimeError(f"{others} rows of {table} belong to other tenants; cannot downgrade")
    op.drop_index("ix_sweeps_tenant_created", table_name="sweeps")
    op.drop_index("ix_jobs_tenant_status_created", table_name="jobs")
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    op.create_index("ix_jobs_created", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_sweeps_created", "sweeps", ["created_at", "id"])
    sqlite = bind.dialect.name == "sqlite"
    with op.batch_alter_table("datasets", naming_convention=_NAMING) as batch:
        batch.drop_constraint("uq_datasets_tenant_hash", type_="unique")
        batch.create_unique_constraint("uq_datasets_content_hash" if sqlite else "datasets_content_hash_key",
                                       ["content_hash"])
        batch.drop_column("tenant_id")
    for table in ("jobs", "sweeps"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("tenant_id")
    with op.batch_alter_table("idempotency_keys", recreate="always") as batch:
        batch.drop_column("tenant_id")
        batch.create_primary_key("idempotency_keys_pkey", ["key"])
