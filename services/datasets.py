"""Dataset use cases: store training data once per content, read it back, parse CSV uploads."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re

import numpy as np
from sqlalchemy.orm import Session

from services import idempotency
from services.config import get_settings
from services.db import repository
from services.db.session import session_scope
from services.errors import InvalidInput, NotFound
from services.idempotency import Claim, Created
from services.spec import DatasetRead, Matrix, check_matrix

_COLUMN = re.compile(r"^([xy])(\d*)$")


def create_dataset(x: Matrix, y: Matrix) -> DatasetRead:
    """Idempotent: the same data uploaded twice (or inlined in many jobs) is one row."""
    return create_dataset_once(x, y, None).value


def create_dataset_once(x: Matrix, y: Matrix, idempotency_key: str | None) -> Created[DatasetRead]:
    """``create_dataset``, once per idempotency key: the same data is one dataset anyway, but a
    key used for other data is a Conflict, and a retry is told it is one (``replayed``)."""
    x_array, y_array = to_arrays(x, y)
    digest = content_hash(x_array, y_array)
    claim = None if idempotency_key is None else Claim.of(idempotency_key, "dataset", {"content_hash": digest})
    return idempotency.once(claim, lambda: _store(digest, x_array, y_array, claim), _read)


def _store(digest: str, x: np.ndarray, y: np.ndarray, claim: Claim | None) -> DatasetRead:
    with session_scope() as session:
        dataset = repository.store_dataset(session, digest, x, y)
        if claim is not None:
            claim.store(session, dataset.id)
        return dataset


def _read(session: Session, dataset_id: str) -> DatasetRead:
    dataset = repository.find_dataset(session, dataset_id)
    if dataset is None:
        raise NotFound("dataset", dataset_id)
    return dataset


def get_dataset(dataset_id: str) -> DatasetRead:
    with session_scope() as session:
        return _read(session, dataset_id)


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
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            raise InvalidInput((*loc, name, int(bad[0][0])), "values must be finite numbers")
        result.append(array)
    return result[0], result[1]


def content_hash(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over dtype, shapes and little-endian bytes: equal data, equal hash, any platform."""
    digest = hashlib.sha256(f"{x.dtype.name}|{x.shape}|{y.shape}|".encode())
    digest.update(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=x.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def parse_csv(text: str) -> tuple[Matrix, Matrix]:
    """Header row names the columns: ``x`` or ``x1, x2, ...`` are inputs, ``y`` or ``y1, ...``
    outputs, ordered by their number. Errors are located as ``("csv", line, column)`` with
    1-based file line numbers (the header is line 1), which is what an editor shows."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise InvalidInput(("csv",), "is empty; expected a header row like x,y")
    inputs, outputs = _columns(header, reader.line_num)
    x: Matrix = []
    y: Matrix = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            message = f"line {line} has {len(row)} fields, the header has {len(header)}"
            raise InvalidInput(("csv", line), message)
        x.append([_number(row, i, line, header) for i in inputs])
        y.append([_number(row, i, line, header) for i in outputs])
    if not x:
        raise InvalidInput(("csv",), "has a header but no data rows")
    limit = get_settings().max_points
    if len(x) > limit:
        raise InvalidInput(("csv",), f"{len(x)} rows exceed the limit of {limit} points")
    return x, y


def _columns(header: list[str], line: int) -> tuple[list[int], list[int]]:
    """Column indices of the inputs and outputs, each ordered by the number in the name."""
    found: dict[str, dict[int, int]] = {"x": {}, "y": {}}
    for index, raw in enumerate(header):
        name = raw.strip().lower()
        match = _COLUMN.match(name)
        if match is None:
            raise InvalidInput(("csv", line, raw.strip() or index), f"unknown column {raw.strip()!r}; "
                               "use x or x1, x2, ... for inputs and y or y1, y2, ... for outputs")
        kind, number = match.group(1), int(match.group(2) or 0)
        if number in found[kind]:
            raise InvalidInput(("csv", line, raw.strip()), f"duplicate column {raw.strip()!r}")
        found[kind][number] = index
    for kind in ("x", "y"):
        if not found[kind]:
            raise InvalidInput(("csv", line), f"no {kind} column in the header")
    return ([found["x"][n] for n in sorted(found["x"])], [found["y"][n] for n in sorted(found["y"])])


def _number(row: list[str], index: int, line: int, header: list[str]) -> float:
    column = header[index].strip()
    cell = row[index].strip()
    try:
        value = float(cell)
    except ValueError:
        message = f"line {line}, column {column}: {cell!r} is not a number"
        raise InvalidInput(("csv", line, column), message) from None
    if not math.isfinite(value):
        raise InvalidInput(("csv", line, column), f"line {line}, column {column}: {cell!r} is not finite")
    return value
