"""Array namespaces: the engine runs the same code on NumPy (CPU) or CuPy (GPU).

CuPy, numba and numexpr are imported lazily, only when asked for, so none is needed to import
the engine. numba and numexpr are optional CPU accelerators of the activation kernels (the
optional extra ``fast``); they work on NumPy arrays only (see ``kernels_for``).
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache
from typing import Any

import numpy as np

from services.engine.activations import NumexprKernels, PlainKernels

NAMESPACES = ("numpy", "cupy")


def get_namespace(name: str = "numpy") -> Any:
    """The array module for ``name``: ``numpy``, or ``cupy`` (ImportError when not installed)."""
    if name not in NAMESPACES:
        raise ValueError(f"unknown array namespace {name!r}; expected one of {NAMESPACES}")
    return importlib.import_module(name)


def is_numpy(xp: Any) -> bool:
    """True for the NumPy namespace (host memory, numexpr and ``out=`` everywhere allowed)."""
    return xp is np


def is_cupy(xp: Any) -> bool:
    """True for the real CuPy (the CPU stand-in of the tests, NumPy under another name, is not)."""
    return getattr(xp, "__name__", "") == "cupy" and hasattr(xp, "cuda")


def to_host(xp: Any, array: Any) -> np.ndarray:
    """Copy an ``xp`` array to host NumPy (a no-op view for NumPy); never pickles."""
    if is_numpy(xp):
        return np.asarray(array)
    return xp.asnumpy(array)


def einsum_into(xp: Any, spec: str, a: Any, b: Any, out: Any) -> Any:
    """out[...] = einsum(spec, a, b), in place where the namespace supports it."""
    if xp is np:
        return np.einsum(spec, a, b, out=out)
    out[...] = xp.einsum(spec, a, b)
    return out


def sum_into(xp: Any, a: Any, axis: int, out: Any) -> Any:
    """out = a.sum(axis); NumPy's ufunc reduce directly, without np.sum's Python wrapper."""
    if xp is np:
        return np.add.reduce(a, axis=axis, out=out)
    return xp.sum(a, axis=axis, out=out)


def load_numexpr() -> Any | None:
    """The numexpr module, or None when it is not installed (the plain path is then used)."""
    try:
        return importlib.import_module("numexpr")
    except ImportError:
        return None


@lru_cache(maxsize=1)
def load_numba_kernels() -> Any | None:
    """``numba_kernels.NumbaKernels`` (compiling on first use), or None without numba."""
    try:
        return importlib.import_module("services.engine.numba_kernels").NumbaKernels()
    except ImportError:
        return None


KERNELS = ("auto", "numpy", "numba", "numexpr")
AUTO_KERNELS: str | None = None  # what "auto" means; None: numba where installed (tests pin it)


def kernels_for(xp: Any, name: str = "auto") -> tuple[str, Any]:
    """(name, kernels) of the activation kernels to use: ``numba`` (vectorized polynomials, the
    default on NumPy when numba is installed), ``numpy`` (one xp ufunc per op; NumPy without
    numba), ``numexpr``, or on CuPy ``cupy`` (one CUDA kernel per formula, unless ``numpy`` is
    named). ``auto`` picks the first that applies; a named one that is not installed raises
    ImportError. Only the name decides the numbers: a pack gives bit-identical results wherever
    the same kernels run, and differs in the last bits otherwise."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernels {name!r}; expected one of {KERNELS}")
    if name == "auto" and AUTO_KERNELS is not None:
        name = AUTO_KERNELS
    if not is_numpy(xp):  # CuPy: its fused kernels unless "numpy" is asked for; a stand-in: plain
        if name != "numpy" and is_cupy(xp):
            return "cupy", importlib.import_module("services.engine.cupy_kernels").CupyKernels(xp)
        return "numpy", PlainKernels(xp)
    if name == "numpy":
        return "numpy", PlainKernels(xp)
    if name in ("auto", "numba"):
        numba_kernels = load_numba_kernels()
        if numba_kernels is not None:
            return "numba", numba_kernels
        if name == "numba":
            raise ImportError("kernels='numba' needs numba (pip install 'descent[fast]')")
        return kernels_for(xp, "numpy")
    numexpr = load_numexpr()
    if numexpr is None:
        raise ImportError("kernels='numexpr' needs numexpr (pip install 'descent[fast]')")
    return "numexpr", NumexprKernels(numexpr)


@lru_cache(maxsize=1)
def threadpool_controller() -> Any | None:
    """threadpoolctl's controller (it scans the loaded BLAS libraries once), or None."""
    try:
        return importlib.import_module("threadpoolctl").ThreadpoolController()
    except ImportError:
        return None


# OpenBLAS's targets whose GEMM takes small products (M N K up to 100^3) without packing them:
# its AVX-512 x86 kernels (threadpoolctl names the target OpenBLAS chose for this CPU).
SMALL_PRODUCT_TARGETS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


@lru_cache(maxsize=1)
def blas_has_small_products() -> bool:
    """Whether NumPy's BLAS multiplies small matrices on a path of their own (``chunks`` then
    keeps products that small). False without threadpoolctl, or with another BLAS."""
    controller = threadpool_controller()
    if controller is None:
        return False
    return any(lib.internal_api == "openblas" and str(lib.architecture).lower() in SMALL_PRODUCT_TARGETS
               for lib in controller.lib_controllers)


def blas_threads(xp: Any, limit: int | None) -> AbstractContextManager:
    """Cap the host BLAS thread pool while a pack trains.

    Many small GEMMs (a few MFLOP each) lose more to waking BLAS threads than they gain, and
    their timings swing with the machine's load; one thread makes them fast and steady. Without
    threadpoolctl (optional extra ``fast``), on CuPy, or with ``limit`` None: no change.
    """
    controller = threadpool_controller() if limit is not None and is_numpy(xp) else None
    if controller is None:
        return nullcontext()
    return controller.limit(limits=limit, user_api="blas")
