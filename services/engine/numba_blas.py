"""NumPy's own OpenBLAS, called from numba-compiled code (optional extra ``fast``).

Why: a compiled step that multiplies matrices must not go back to Python for each product (on
two threads every such call hands the GIL over; ``numba_wide``). NumPy's wheels ship an ILP64
OpenBLAS whose ``cblas_?gemm``/``cblas_?gemv`` take 64-bit sizes; its symbols are given fixed
names for LLVM, so compiled code (and numba's on-disk cache of it) calls them like any C
function, and threadpoolctl's limits and the CPU kernels OpenBLAS chose apply as to NumPy's
own products. Importing this module raises ImportError where NumPy's BLAS is anything else
(MKL, Accelerate, an LP64 build): the callers then keep to NumPy's matmul.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from llvmlite import binding as llvm
from numba import types
from numba.extending import overload, register_jitable

from services.engine.backend import threadpool_controller

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enums


def _candidates() -> list[str]:
    """Paths of the OpenBLAS libraries loaded in this process, NumPy's own first."""
    controller = threadpool_controller()
    paths = [lib.filepath for lib in (controller.lib_controllers if controller else []) if lib.internal_api == "openblas"]
    numpy_dir = os.path.dirname(os.path.realpath(np.__file__))  # its wheel's libraries: numpy.libs beside it
    return sorted(paths, key=lambda path: not os.path.realpath(path).startswith(numpy_dir))


ROUTINES = ("sgemm", "dgemm", "sgemv", "dgemv")


def _register() -> None:
    """Give NumPy's ``cblas_?gemm64_``/``cblas_?gemv64_`` the names ``descent_?gemm``/``descent_?gemv``
    for LLVM."""
    for path in _candidates():
        try:
            llvm.load_library_permanently(path)  # loaded by NumPy already: this makes it the JIT's
        except RuntimeError:
            continue
        for prefix in ("scipy_", ""):
            addresses = [llvm.address_of_symbol(f"{prefix}cblas_{name}64_") for name in ROUTINES]
            if all(addresses):
                for name, address in zip(ROUTINES, addresses):
                    llvm.add_symbol(f"descent_{name}", address)
                return
    raise ImportError("numba_blas needs NumPy's BLAS to be an ILP64 OpenBLAS found by threadpoolctl")


_register()


def _gemm_type(real: Any) -> Any:
    """cblas_?gemm64_(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)."""
    i32, i64, ptr = types.int32, types.int64, types.voidptr
    return types.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)


def _gemv_type(real: Any) -> Any:
    """cblas_?gemv64_(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy)."""
    i32, i64, ptr = types.int32, types.int64, types.voidptr
    return types.void(i32, i32, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)


_SGEMM = types.ExternalFunction("descent_sgemm", _gemm_type(types.float32))
_DGEMM = types.ExternalFunction("descent_dgemm", _gemm_type(types.float64))
_SGEMV = types.ExternalFunction("descent_sgemv", _gemv_type(types.float32))
_DGEMV = types.ExternalFunction("descent_dgemv", _gemv_type(types.float64))


def gemm(trans_a: int, trans_b: int, a: Any, b: Any, c: Any) -> None:
    """c = op(a) op(b), overwritten (never read, so NaN in c does not spread), for row-major 2-D
    arrays of one dtype with contiguous rows; op is a transpose where ``trans_*`` is TRANS.
    Callable from compiled code only.

    Where c is one row or one column, the product is a matrix-vector product and goes to
    ``gemv``: OpenBLAS's AVX2 kernels run ``gemm`` on such shapes through its packing path (W4's
    last layer, 33 x 2000 by a vector: 3-4x the time of ``gemv``; benchmarks/RESULTS.md,
    "Thirteenth session")."""


@overload(gemm)
def _gemm(trans_a, trans_b, a, b, c):  # noqa: ANN001, ANN202 - numba checks its names against impl's
    single = c.dtype == types.float32
    blas, gemv, real = (_SGEMM, _SGEMV, np.float32) if single else (_DGEMM, _DGEMV, np.float64)

    def impl(trans_a, trans_b, a, b, c):  # noqa: ANN001, ANN202
        m, n = c.shape
        if m == 1 or n == 1:
            c[...] = 0  # gemv scales y by beta = 0: a NaN left there must not spread
        if m == 1:  # c's row = op(b)^T times op(a)'s row, which starts at a's first element
            step = 1 if trans_a == NO_TRANS else _lead(a)
            gemv(ROW_MAJOR, TRANS if trans_b == NO_TRANS else NO_TRANS, b.shape[0], b.shape[1], real(1.0),
                 b.ctypes, _lead(b), a.ctypes, step, real(0.0), c.ctypes, 1)
        elif n == 1:  # c's column = op(a) times op(b)'s column, which starts at b's first element
            step = _lead(b) if trans_b == NO_TRANS else 1
            gemv(ROW_MAJOR, trans_a, a.shape[0], a.shape[1], real(1.0), a.ctypes, _lead(a), b.ctypes, step,
                 real(0.0), c.ctypes, _lead(c))
        else:
            k = a.shape[0] if trans_a == TRANS else a.shape[1]
            blas(ROW_MAJOR, trans_a, trans_b, m, n, k, real(1.0), a.ctypes, _lead(a), b.ctypes, _lead(b),
                 real(0.0), c.ctypes, _lead(c))
    return impl


@register_jitable
def _lead(x: Any) -> int:
    """The leading dimension of a row-major array: its row stride in elements (never below a
    row's length: NumPy may give a one-row array any stride, BLAS would refuse it)."""
    return max(x.strides[0] // x.itemsize, x.shape[1], 1)
