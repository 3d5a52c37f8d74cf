"""Raw-array codec: bytes + dtype + shape. Never pickle: ``allow_pickle`` is never needed."""

from __future__ import annotations

import numpy as np

ALLOWED_DTYPES = frozenset({"float64", "float32", "int64", "int32", "int8", "bool"})


def encode(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """Little-endian C-order bytes, so any reader can rebuild the array from dtype and shape."""
    array = np.asarray(array)
    dtype = array.dtype.name
    if dtype not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {dtype} cannot be stored")
    # shape taken from the array itself: ascontiguousarray would turn a 0-d scalar into (1,)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return dtype, list(array.shape), np.ascontiguousarray(little).tobytes()


def decode(dtype: str, shape: list[int] | tuple[int, ...], data: bytes) -> np.ndarray:
    if dtype not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {dtype} cannot be read")
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
