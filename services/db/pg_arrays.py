"""Binary float8[] for psycopg, built and read by NumPy: history at memory speed both ways.

psycopg adapts a Python list element by element (text format, a regex per float); a chunk of
SSR values is already a contiguous float64 array, so its binary array encoding is one vectorised
copy. Used only for the history table on PostgreSQL (``checkpoints.write_history_chunks``, and
``repository.read_history`` through ``array_send``).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from psycopg import ProgrammingError
from psycopg.adapt import Dumper, PyFormat
from psycopg.pq import Format
from sqlalchemy import BigInteger, String, column, table
from sqlalchemy.types import UserDefinedType

FLOAT8_OID, FLOAT8_ARRAY_OID = 701, 1022
_ELEMENT = np.dtype([("length", ">i4"), ("value", ">f8")])


class Float8Values:
    """A 1-d float64 array to be sent as a PostgreSQL float8[] (NaN and infinities kept)."""

    __slots__ = ("values",)

    def __init__(self, values: Any) -> None:
        self.values = np.asarray(values, dtype=np.float64).reshape(-1)


def encode_float8_array(values: np.ndarray) -> bytes:
    """PostgreSQL's binary array format: header (ndim, has-null, element oid, size, lower bound),
    then (length 8, big-endian double) per element."""
    if values.size == 0:
        return struct.pack(">iiI", 0, 0, FLOAT8_OID)
    body = np.empty(values.size, dtype=_ELEMENT)
    body["length"] = 8
    body["value"] = values
    return struct.pack(">iiIii", 1, 0, FLOAT8_OID, values.size, 1) + body.tobytes()


def decode_float8_array(data: bytes) -> np.ndarray:
    """The inverse of ``encode_float8_array`` for what ``array_send(ssr)`` returns: one
    vectorised copy where psycopg's text loader parsed each float (a million-step history read
    0.5-0.7 s of parsing). SQL NULL elements (never written by Descent) read as NaN."""
    ndim, has_null, oid = struct.unpack_from(">iiI", data)
    if ndim == 0:
        return np.empty(0)
    if ndim != 1 or oid != FLOAT8_OID:
        raise ValueError(f"not a 1-d float8[]: ndim {ndim}, element oid {oid}")
    (size,) = struct.unpack_from(">i", data, 12)
    if not has_null:
        return np.frombuffer(data, dtype=_ELEMENT, count=size, offset=20)["value"].astype(np.float64)
    values, offset = np.full(size, np.nan), 20
    for i in range(size):
        (length,) = struct.unpack_from(">i", data, offset)
        offset += 4
        if length != -1:
            (values[i],) = struct.unpack_from(">d", data, offset)
            offset += length
    return values


class _Float8ArrayType(UserDefinedType):
    """No bind processing: the Float8Values object reaches psycopg's dumper as it is."""

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "FLOAT8[]"


# A Core view of the history table whose ssr column takes Float8Values (the ORM's ARRAY type
# would first turn the array into a list).
HISTORY_CHUNKS = table(
    "history_chunks", column("job_id", String), column("first_step", BigInteger),
    column("ssr", _Float8ArrayType()),
)


class Float8ArrayDumper(Dumper):
    format = Format.BINARY
    oid = FLOAT8_ARRAY_OID

    def dump(self, obj: Float8Values) -> bytes:
        return encode_float8_array(obj.values)


def register(dbapi_connection: Any) -> None:
    """Teach this psycopg connection to dump Float8Values. Per connection (cheap, idempotent),
    so pooled connections made before this module was imported work too."""
    adapters = dbapi_connection.adapters
    try:
        adapters.get_dumper(Float8Values, PyFormat.AUTO)
    except ProgrammingError:
        adapters.register_dumper(Float8Values, Float8ArrayDumper)
