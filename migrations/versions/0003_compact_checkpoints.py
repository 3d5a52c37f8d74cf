"""Compact storage: one checkpoint row holds all its arrays (a manifest and one blob) instead of
a row per array, and SQLite keeps history chunks as raw float64 bytes instead of JSON. Both cut
the rows and the encoding a pack of thousands of networks writes at each checkpoint.

The tables are written out here (not imported from the models), and the data are converted:
every stored checkpoint and SQLite history chunk reads the same afterwards.

Revision ID: 0003_compact_checkpoints
Revises: 0002_scheduler_and_sweeps
Create Date: 2026-11-29
"""

from __future__ import annotations

import json
import math
import struct

import sqlalchemy as sa
from alembic import op

revision: str = "0003_compact_checkpoints"
down_revision: str | None = "0002_scheduler_and_sweeps"
branch_labels = None
depends_on = None

# The dtypes services/db/arrays.py allows, with their sizes in bytes.
_ITEMSIZE = {"float64": 8, "float32": 4, "int64": 8, "int32": 4, "int8": 1, "bool": 1}

_checkpoints = sa.table("checkpoints", sa.column("job_id", sa.String), sa.column("step", sa.Integer),
                        sa.column("manifest", sa.JSON), sa.column("data", sa.LargeBinary))
_arrays = sa.table("checkpoint_arrays", sa.column("job_id", sa.String), sa.column("step", sa.Integer),
                   sa.column("name", sa.String), sa.column("dtype", sa.String), sa.column("shape", sa.JSON),
                   sa.column("data", sa.LargeBinary))


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("manifest", sa.JSON, nullable=True))
        batch.add_column(sa.Column("data", sa.LargeBinary, nullable=True))
    _merge_arrays()
    with op.batch_alter_table("checkpoints") as batch:
        batch.alter_column("manifest", existing_type=sa.JSON, nullable=False)
        batch.alter_column("data", existing_type=sa.LargeBinary, nullable=False)
    op.drop_table("checkpoint_arrays")
    if op.get_bind().dialect.name == "sqlite":
        _history_to_bytes()


def _merge_arrays() -> None:
    """Each checkpoint's array rows, in name order, become its manifest and blob."""
    bind = op.get_bind()
    rows = bind.execute(sa.select(_arrays).order_by(_arrays.c.job_id, _arrays.c.step, _arrays.c.name))
    merged: dict[tuple[str, int], tuple[list, list[bytes]]] = {}
    for row in rows:
        shape = json.loads(row.shape) if isinstance(row.shape, str) else row.shape
        manifest, parts = merged.setdefault((row.job_id, row.step), ([], []))
        manifest.append([row.name, row.dtype, list(shape)])
        parts.append(bytes(row.data))
    for (job_id, step), (manifest, parts) in merged.items():
        bind.execute(_checkpoints.update().where(_checkpoints.c.job_id == job_id, _checkpoints.c.step == step)
                     .values(manifest=manifest, data=b"".join(parts)))
    bind.execute(_checkpoints.delete().where(_checkpoints.c.manifest.is_(None)))  # had no arrays


def _history_to_bytes() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("history_chunks") as batch:
        batch.add_column(sa.Column("ssr_bytes", sa.LargeBinary, nullable=True))
    table = sa.table("history_chunks", sa.column("job_id", sa.String), sa.column("first_step", sa.Integer),
                     sa.column("ssr", sa.Text), sa.column("ssr_bytes", sa.LargeBinary))
    for row in bind.execute(sa.select(table.c.job_id, table.c.first_step, table.c.ssr)).all():
        values = [math.nan if v is None else float(v) for v in json.loads(row.ssr)]
        bind.execute(table.update().where(table.c.job_id == row.job_id, table.c.first_step == row.first_step)
                     .values(ssr_bytes=struct.pack(f"<{len(values)}d", *values)))
    with op.batch_alter_table("history_chunks") as batch:
        batch.drop_column("ssr")
        batch.alter_column("ssr_bytes", new_column_name="ssr", existing_type=sa.LargeBinary, nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _history_to_json()
    op.create_table(
        "checkpoint_arrays",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.ForeignKeyConstraint(["job_id", "step"], ["checkpoints.job_id", "checkpoints.step"], ondelete="CASCADE"),
    )
    _split_arrays()
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("data")
        batch.drop_column("manifest")


def _split_arrays() -> None:
    bind = op.get_bind()
    for row in bind.execute(sa.select(_checkpoints)).all():
        manifest = json.loads(row.manifest) if isinstance(row.manifest, str) else row.manifest
        offset = 0
        for name, dtype, shape in manifest:
            size = math.prod(shape) * _ITEMSIZE[dtype]
            bind.execute(_arrays.insert().values(job_id=row.job_id, step=row.step, name=name, dtype=dtype,
                                                 shape=shape, data=bytes(row.data[offset:offset + size])))
            offset += size


def _history_to_json() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("history_chunks") as batch:
        batch.add_column(sa.Column("ssr_json", sa.JSON, nullable=True))
    table = sa.table("history_chunks", sa.column("job_id", sa.String), sa.column("first_step", sa.Integer),
                     sa.column("ssr", sa.LargeBinary), sa.column("ssr_json", sa.JSON))
    for row in bind.execute(sa.select(table.c.job_id, table.c.first_step, table.c.ssr)).all():
        values = list(struct.unpack(f"<{len(row.ssr) // 8}d", row.ssr))
        bind.execute(table.update().where(table.c.job_id == row.job_id, table.c.first_step == row.first_step)
                     .values(ssr_json=values))
    with op.batch_alter_table("history_chunks") as batch:
        batch.drop_column("ssr")
        batch.alter_column("ssr_json", new_column_name="ssr", existing_type=sa.JSON, nullable=False)
