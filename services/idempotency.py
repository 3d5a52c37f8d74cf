"""Idempotency keys on creates (Stripe's semantics). A client that retries a create with the
same ``Idempotency-Key`` and the same request gets the resource the first one made, read as it
is now, and no second resource; the same key with another request is a Conflict.

The key is stored with a hash of the request and the resource's id in the transaction that
inserts the resource (``Claim.store``). Two requests racing with one key both insert; the
database lets one keep the key, the other's transaction rolls back (its resource with it) and it
answers with the winner's resource; so does one refused meanwhile (the winner filled the
tenant's queue, say), as its retry would be. Keys live ``idempotency_key_ttl`` (24 h); an
older one counts as new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Literal, TypeVar

from sqlalchemy.orm import Session

from services.config import get_settings
from services.db import idempotency as store
from services.db.models import utcnow
from services.db.session import session_scope
from services.errors import Conflict, DomainError

HEADER = "Idempotency-Key"

Resource = Literal["job", "sweep", "dataset"]
T = TypeVar("T")


@dataclass(frozen=True)
class Created(Generic[T]):
    """A create's answer: the resource, and whether it was made earlier under the same key."""

    value: T
    replayed: bool = False


class KeyTaken(Exception):
    """Another request stored the key first. Raised inside the create's transaction, so that
    rolls back; ``once`` catches it. Not a DomainError: it never reaches a client."""


@dataclass(frozen=True)
class Claim:
    """A tenant's key, the resource kind it creates and the hash of its request."""

    tenant: str
    key: str
    resource: Resource
    request_hash: str

    @classmethod
    def of(cls, tenant: str, key: str, resource: Resource, document: object) -> Claim:
        """``document``: the parsed, validated request as JSON-able values; the operation
        (create this kind of resource) is hashed with it, so one key on two endpoints differs."""
        body = json.dumps(document, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"create {resource}\n{body}".encode()).hexdigest()
        return cls(tenant, key, resource, digest)

    def store(self, session: Session, resource_id: str) -> None:
        """Call in the resource's transaction, after its insert."""
        if not store.store_key(session, self.tenant, self.key, self.request_hash, self.resource, resource_id, _expiry()):
            raise KeyTaken(self.key)


def once(claim: Claim | None, create: Callable[[], T], read: Callable[[Session, str], T]) -> Created[T]:
    """``create()`` (which calls ``claim.store``) unless the key was used: then ``read(session,
    id)`` of what it made. Without a key, just ``create()``: no query is added."""
    if claim is None:
        return Created(create())
    for _ in range(2):
        replay = _replay(claim, read)
        if replay is not None:
            return replay
        try:
            return Created(create())
        except KeyTaken:
            continue  # the winner has committed by now: the next lookup finds its resource
        except DomainError:
            # A request racing with this key may have committed between the lookup and the
            # refusal (it filled the queue this one is refused for, say): answer as its retry.
            replay = _replay(claim, read)
            if replay is not None:
                return replay
            raise
    raise Conflict(f"{HEADER} {claim.key!r} is being used by concurrent requests; retry")


def _replay(claim: Claim, read: Callable[[Session, str], T]) -> Created[T] | None:
    with session_scope() as session:
        stored = store.find_key(session, claim.tenant, claim.key, fresh_since=_expiry())
        if stored is None:
            return None
        if (stored.resource, stored.request_hash) != (claim.resource, claim.request_hash):
            raise Conflict(f"{HEADER} {claim.key!r} was already used for another request (a different "
                           "body or endpoint); send a new key for a new request")
        return Created(read(session, stored.resource_id), replayed=True)


def _expiry() -> datetime:
    """Keys created before this are expired."""
    return utcnow() - timedelta(seconds=get_settings().idempotency_key_ttl)
