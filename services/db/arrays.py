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


Manifest = list[list]  # [[name, dtype, shape], ...]


def pack(arrays: dict[str, np.ndarray]) -> tuple[Manifest, bytes]:
    """Several named arrays as one manifest and one blob (their encodings, concatenated)."""
    manifest, parts = [], []
    for name, array in arrays.items():
        dtype, shape, data = encode(array)
        manifest.append([name, dtype, shape])
        parts.append(data)
    return manifest, b"".join(parts)


def pack_members(arrays: dict[str, np.ndarray]) -> tuple[Manifest, list[bytes]]:
    """``pack`` for every member of a pack at once: arrays are (M, ...) and member i's blob is
    the concatenation of each ``array[i]``. One vectorised copy instead of M x names encodes."""
    names = list(arrays)
    members = len(next(iter(arrays.values())))
    manifest, columns = [], []
    for name in names:
        array = np.asarray(arrays[name])
        if array.dtype.name not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {array.dtype.name} cannot be stored")
        little = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
        manifest.append([name, array.dtype.name, list(array.shape[1:])])
        columns.append(little.reshape(members, -1).view(np.uint8).reshape(members, -1))
    table = np.concatenate(columns, axis=1) if columns else np.empty((members, 0), np.uint8)
    return manifest, [row.tobytes() for row in table]


def unpack(manifest: Manifest, data: bytes) -> dict[str, np.ndarray]:
    """The arrays of ``pack``, by name."""
    found, offset = {}, 0
    for name, dtype, shape in manifest:
        if dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {dtype} cannot be read")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        found[name] = decode(dtype, shape, data[offset:offset + size])
        offset += size
    if offset != len(data):
        raise ValueError(f"checkpoint blob has {len(data)} bytes, its manifest describes {offset}")
    return found
