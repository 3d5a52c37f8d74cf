"""Dataset use cases: store training data once per content, read it back."""

from __future__ import annotations

import hashlib

import numpy as np
from sqlalchemy.orm import Session

from services import idempotency
from services.config import get_settings
from services.db import repository
from services.db.models import DEFAULT_TENANT
from services.db.session import session_scope
from services.errors import InvalidInput, NotFound
from services.idempotency import Claim, Created
from services.spec import DatasetRead, Matrix, check_matrix



def create_dataset(x: Matrix, y: Matrix, *, tenant: str = DEFAULT_TENANT) -> DatasetRead:
    """Idempotent: the same data uploaded twice (or inlined in many jobs) by one tenant is one row."""
    return create_dataset_once(x, y, None, tenant=tenant).value


def create_dataset_once(x: Matrix, y: Matrix, idempotency_key: str | None, *,
                        tenant: str = DEFAULT_TENANT) -> Created[DatasetRead]:
    """``create_dataset``, once per idempotency key: the same data is one dataset anyway, but a
    key used for other data is a Conflict, and a retry is told it is one (``replayed``)."""
    x_array, y_array = to_arrays(x, y)
    digest = content_hash(x_array, y_array)
    claim = None if idempotency_key is None else Claim.of(tenant, idempotency_key, "dataset", {"content_hash": digest})
    return idempotency.once(claim, lambda: _store(digest, x_array, y_array, claim, tenant),
                            lambda session, dataset_id: _read(session, dataset_id, tenant))


def _store(digest: str, x: np.ndarray, y: np.ndarray, claim: Claim | None, tenant: str) -> DatasetRead:
    with session_scope() as session:
        dataset = repository.store_dataset(session, digest, x, y, tenant=tenant)
        if claim is not None:
            claim.store(session, dataset.id)
        return dataset


def _read(session: Session, dataset_id: str, tenant: str) -> DatasetRead:
    dataset = repository.find_dataset(session, dataset_id, tenant=tenant)
    if dataset is None:
        raise NotFound("dataset", dataset_id)
    return dataset


def get_dataset(dataset_id: str, *, tenant: str = DEFAULT_TENANT) -> DatasetRead:
    with session_scope() as session:
        return _read(session, dataset_id, tenant)


def to_arrays(x: Matrix, y: Matrix, loc: tuple[str | int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 arrays; errors name ``(*loc, "x"|"y", row)``. Callers that validated
    with pydantic already pay little here, and the CSV path and direct callers need it."""
    for name, rows in (("x", x), ("y", y)):
        if not rows:
            raise InvalidInput((*loc, name), "must have at least one row")
        check_matrix(rows, (*loc, name))
    if len(x) != len(y):
        raise InvalidInput((*loc, "y"), f"has {len(y)} rows but x has {len(x)}")
    limit = get_settings().max_points
    if len(x) > limit:
        raise InvalidInput((*loc, "x"), f"{len(x)} points exceed the limit of {limit}")
    result = []
    for name, rows in (("x", x), ("y", y)):
        try:
            array = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInput((*loc, name), f"values must be numbers ({exc})") from None
        if not np.isfinite(array).all():  # the common case costs one pass; a refusal finds its row
            bad = np.argwhere(~np.isfinite(array))
            raise InvalidInput((*loc, name, int(bad[0][0])), "values must be finite numbers")
        result.append(array)
    return result[0], result[1]


def content_hash(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over dtype, shapes and little-endian bytes: equal data, equal hash, any platform."""
    digest = hashlib.sha256(f"{x.dtype.name}|{x.shape}|{y.shape}|".encode())
    digest.update(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=x.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()
