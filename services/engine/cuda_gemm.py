"""Batched matrix products on CuPy as one cuBLAS call each, straight between strided views.

``cupy.matmul`` copies a transposed (non-contiguous) operand to a contiguous one, builds device
pointer arrays (three more kernels) when an operand is shared by every matrix of the batch, and
writes a strided output through a temporary and a copy. A model-first step makes nine such
products; on the GPU's W4 those extras were most of the step (benchmarks/RESULTS.md, "Sixteenth
session"). cuBLAS' strided batched GEMM takes transposes, a batch stride of 0 and any leading
dimension itself, so each product here is one call that reads and writes the views in place.

``plan`` is pure arithmetic on shapes and strides (tested on the CPU against an emulation of
the cuBLAS call); ``matmul_into`` makes the call, or falls back to ``xp.matmul`` where no plan
exists (an operand without a unit stride, a dtype cuBLAS' real GEMMs do not take) or the
namespace is not CuPy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from services.engine.backend import is_cupy

N, T = 0, 1  # cuBLAS' CUBLAS_OP_N and CUBLAS_OP_T
DIRECT = True  # False: cupy.matmul for every product (benchmarks/gpu_probe.py times both)
# alpha 1 and beta 0 (out is not read) as host scalars, per dtype: cuBLAS reads them during the call
SCALARS = {char: (np.ones(1, dtype=char), np.zeros(1, dtype=char)) for char in "fd"}
_BOUND = threading.local()  # .handle: a cuBLAS handle bound to a capturing stream (bound_handle)


class Matrix(NamedTuple):
    """One operand as cuBLAS reads it (column-major): stored transposed or not, leading
    dimension and batch stride in elements."""

    row_major: bool  # the matrix's rows are contiguous: in column-major terms it is its transpose
    ld: int
    batch_stride: int


class Gemm(NamedTuple):
    """The arguments of one strided batched GEMM call, pointers aside. ``swap``: the call takes
    (b, a) as its first and second operands (it computes C^T = B^T A^T, for a row-major C)."""

    swap: bool
    transa: int
    transb: int
    m: int
    n: int
    k: int
    lda: int
    stride_a: int
    ldb: int
    stride_b: int
    ldc: int
    stride_c: int
    batch: int


def matrix(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> Matrix | None:
    """How cuBLAS can read a (batch, rows, cols) or a shared (rows, cols) operand; None when
    neither of its axes has a unit stride, or a stride is negative or not a whole element."""
    if any(s < 0 or s % itemsize for s in strides):
        return None
    elements = [s // itemsize for s in strides]
    batch_stride = elements[0] if len(shape) == 3 and shape[0] > 1 else 0
    rows, cols = shape[-2:]
    s0, s1 = elements[-2:]
    if s1 == 1 or cols == 1:
        ld = s0 if rows > 1 else cols
        if ld >= max(cols, 1):
            return Matrix(True, ld, batch_stride)
    if s0 == 1 or rows == 1:
        ld = s1 if cols > 1 else rows
        if ld >= max(rows, 1):
            return Matrix(False, ld, batch_stride)
    return None


def plan(a: Any, b: Any, c: Any) -> Gemm | None:
    """The call for c[i] = a[i] @ b[i] (c (batch, m, n); a (batch, m, k) or shared (m, k); b
    likewise), or None when cuBLAS cannot read or write these views as they are."""
    if c.ndim != 3 or a.ndim not in (2, 3) or b.ndim not in (2, 3) or c.shape[0] == 0:
        return None
    batch, m, n = c.shape
    k = a.shape[-1]
    if a.shape[-2:] != (m, k) or b.shape[-2:] != (k, n) or k == 0:
        return None
    if any(x.ndim == 3 and x.shape[0] != batch for x in (a, b)):
        return None
    ma, mb, mc = (matrix(x.shape, x.strides, x.itemsize) for x in (a, b, c))
    if ma is None or mb is None or mc is None or (batch > 1 and mc.batch_stride == 0):
        return None
    if mc.row_major:  # C^T (n x m) = B^T A^T: a row-major operand is its own transpose there
        return Gemm(True, N if mb.row_major else T, N if ma.row_major else T, n, m, k,
                    mb.ld, mb.batch_stride, ma.ld, ma.batch_stride, mc.ld, mc.batch_stride, batch)
    return Gemm(False, T if ma.row_major else N, T if mb.row_major else N, m, n, k,
                ma.ld, ma.batch_stride, mb.ld, mb.batch_stride, mc.ld, mc.batch_stride, batch)


def matmul_into(xp: Any, a: Any, b: Any, out: Any) -> Any:
    """out[...] = a @ b for a batch of matrices (a or b may be one matrix shared by the batch)."""
    if xp is np:
        return np.matmul(a, b, out=out)
    call = None
    if DIRECT and is_cupy(xp):
        call = _plan_of(a.shape, a.strides, a.dtype.char, b.shape, b.strides, b.dtype.char,
                        out.shape, out.strides, out.dtype.char)
    if call is None:
        out[...] = xp.matmul(a, b)
        return out
    _gemm(xp, call, a, b, out)
    return out


class _Operand(NamedTuple):
    """What ``plan`` reads of an array (a step asks for the same few products every time)."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    itemsize: int

    @property
    def ndim(self) -> int:
        return len(self.shape)


@lru_cache(maxsize=4096)
def _plan_of(a_shape: tuple, a_strides: tuple, a_type: str, b_shape: tuple, b_strides: tuple, b_type: str,
             c_shape: tuple, c_strides: tuple, c_type: str) -> Gemm | None:
    """``plan`` for float32 or float64 operands of one dtype, remembered per shapes and strides."""
    if c_type not in SCALARS or a_type != c_type or b_type != c_type:
        return None
    size = np.dtype(c_type).itemsize
    return plan(_Operand(a_shape, a_strides, size), _Operand(b_shape, b_strides, size),
                _Operand(c_shape, c_strides, size))



@contextmanager
def bound_handle(xp: Any) -> Iterator[None]:
    """Within: the products go to CuPy's cuBLAS handle, bound here to the current stream, through
    cuBLAS' own C functions (``_library``), not CuPy's wrappers.

    Each of CuPy's cuBLAS wrappers binds the handle to the current stream first, and refuses to
    during a stream capture (NotImplementedError: seen on the H200, benchmarks/RESULTS.md); bound
    before a capture, the same cuBLAS call is recorded (``cuda_graphs``)."""
    handle = xp.cuda.device.get_cublas_handle()  # (CuPy binds its stream in each wrapper, not here)
    status = _library().cublasSetStream_v2(handle, xp.cuda.get_current_stream().ptr)
    if status != 0:
        raise RuntimeError(f"cublasSetStream failed with status {status}")
    _BOUND.handle = handle
    try:
        yield
    finally:
        _BOUND.handle = None


def _gemm(xp: Any, call: Gemm, a: Any, b: Any, out: Any) -> None:
    """One cuBLAS ?gemmStridedBatched on the current stream (on the bound handle's, if any)."""
    first, second = (b, a) if call.swap else (a, b)
    one, zero = SCALARS[out.dtype.char]
    args = (call.transa, call.transb, call.m, call.n, call.k,
            one.ctypes.data, first.data.ptr, call.lda, call.stride_a, second.data.ptr, call.ldb, call.stride_b,
            zero.ctypes.data, out.data.ptr, call.ldc, call.stride_c, call.batch)
    bound = getattr(_BOUND, "handle", None)
    if bound is None:
        from cupy_backends.cuda.libs import cublas

        gemm = cublas.dgemmStridedBatched if out.dtype.char == "d" else cublas.sgemmStridedBatched
        gemm(xp.cuda.device.get_cublas_handle(), *args)
        return
    library = _library()
    gemm = library.cublasDgemmStridedBatched if out.dtype.char == "d" else library.cublasSgemmStridedBatched
    status = gemm(bound, *args)
    if status != 0:
        raise RuntimeError(f"cuBLAS ?gemmStridedBatched failed with status {status}")


@lru_cache(maxsize=1)
def _library() -> Any:
    """libcublas as this process loaded it (for CuPy): its stream binding and its two strided
    batched GEMMs through ctypes."""
    import ctypes

    with open("/proc/self/maps", encoding="utf-8") as maps:
        paths = sorted({line.split()[-1] for line in maps if "/libcublas.so" in line})
    if not paths:
        raise OSError("libcublas is not loaded in this process")
    library = ctypes.CDLL(paths[0])
    c_int, c_long, c_ptr = ctypes.c_int, ctypes.c_longlong, ctypes.c_void_p
    library.cublasSetStream_v2.restype = c_int
    library.cublasSetStream_v2.argtypes = [c_ptr, c_ptr]
    for name in ("cublasSgemmStridedBatched", "cublasDgemmStridedBatched"):
        function = getattr(library, name)
        function.restype = c_int
        function.argtypes = [c_ptr, c_int, c_int, c_int, c_int, c_int, c_ptr, c_ptr, c_int, c_long,
                             c_ptr, c_int, c_long, c_ptr, c_ptr, c_int, c_long, c_int]
    return library
