"""Storage of idempotency keys: look one up, and store one in the caller's transaction (the one
that inserts the resource), so a key never exists without its resource nor the other way round.

Keys are per tenant (primary key tenant + key): one tenant's key never answers another's
request, nor tells it that the key is in use; nothing else reads the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from services.db.models import IdempotencyKey, utcnow
from services.db.repository import as_utc
from services.db.session import dialect_insert

_keys = IdempotencyKey.__table__
_REPLACED = ("request_hash", "resource", "resource_id", "created_at")


@dataclass(frozen=True)
class StoredKey:
    tenant: str
    key: str
    request_hash: str
    resource: str
    resource_id: str
    created_at: datetime


def find_key(session: Session, tenant: str, key: str, fresh_since: datetime) -> StoredKey | None:
    """The key's row, unless it is older than ``fresh_since`` (then it counts as absent)."""
    row = session.execute(
        select(_keys).where(_keys.c.tenant_id == tenant, _keys.c.key == key, _keys.c.created_at >= fresh_since)
    ).one_or_none()
    if row is None:
        return None
    return StoredKey(row.tenant_id, row.key, row.request_hash, row.resource, row.resource_id, as_utc(row.created_at))


def store_key(session: Session, tenant: str, key: str, request_hash: str, resource: str, resource_id: str,
              expired_before: datetime) -> bool:
    """Insert the key, or overwrite its row if that is older than ``expired_before``. False when
    another request holds the key (committed, or committing: PostgreSQL waits for it): the
    caller then rolls its transaction back. One statement, so a race needs no second query and
    raises no unique violation on either database; RETURNING tells which way it went (a row
    inserted or overwritten, or none), as the drivers' rowcounts of an upsert do not agree."""
    statement = dialect_insert(session, _keys).values(
        tenant_id=tenant, key=key, request_hash=request_hash, resource=resource, resource_id=resource_id, created_at=utcnow())
    statement = statement.on_conflict_do_update(
        index_elements=["tenant_id", "key"], set_={name: statement.excluded[name] for name in _REPLACED},
        where=_keys.c.created_at < expired_before,
    )
    return session.execute(statement.returning(_keys.c.key)).first() is not None


# Rows one scheduler pass deletes at most: a backlog (a database from before the purge existed)
# drains over a few passes instead of holding the maintenance transaction (and SQLite's lock).
PURGE_BATCH = 1000


def forget_expired(session: Session, expired_before: datetime, batch: int = PURGE_BATCH) -> int:
    """Delete up to ``batch`` keys older than ``expired_before``; returns how many. An expired
    key already counts as absent (``find_key``), but its row stayed: without this the table grew
    by a row per keyed create for as long as the service ran. The scheduler's maintenance calls
    it; ``ix_idempotency_keys_created`` keeps the lookup an index range scan. The age is
    tested again on the row deleted: a key reused (overwritten by ``store_key``) since the
    batch was picked is fresh again, and PostgreSQL re-checks that condition on the new row."""
    expired = _keys.c.created_at < expired_before
    oldest = select(_keys.c.tenant_id, _keys.c.key).where(expired).order_by(_keys.c.created_at).limit(batch)
    statement = _keys.delete().where(tuple_(_keys.c.tenant_id, _keys.c.key).in_(oldest), expired)
    return session.execute(statement).rowcount
