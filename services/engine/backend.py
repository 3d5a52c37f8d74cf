"""Array namespaces: the engine runs the same code on NumPy (CPU) or CuPy (GPU).

CuPy and numexpr are imported lazily, only when asked for, so neither is needed to import the
engine. numexpr is an optional CPU accelerator for fused elementwise kernels; it is used only
with NumPy arrays and only when the caller asks for it (see ``fused_kernels``).
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache
from typing import Any

import numpy as np

NAMESPACES = ("numpy", "cupy")


def get_namespace(name: str = "numpy") -> Any:
    """The array module for ``name``: ``numpy``, or ``cupy`` (ImportError when not installed)."""
    if name not in NAMESPACES:
        raise ValueError(f"unknown array namespace {name!r}; expected one of {NAMESPACES}")
    return importlib.import_module(name)


def is_numpy(xp: Any) -> bool:
    """True for the NumPy namespace (host memory, numexpr and ``out=`` everywhere allowed)."""
    return xp is np


def to_host(xp: Any, array: Any) -> np.ndarray:
    """Copy an ``xp`` array to host NumPy (a no-op view for NumPy); never pickles."""
    if is_numpy(xp):
        return np.asarray(array)
    return xp.asnumpy(array)


def load_numexpr() -> Any | None:
    """The numexpr module, or None when it is not installed (the plain path is then used)."""
    try:
        return importlib.import_module("numexpr")
    except ImportError:
        return None


@lru_cache(maxsize=1)
def _threadpool_controller() -> Any | None:
    """threadpoolctl's controller (it scans the loaded BLAS libraries once), or None."""
    try:
        return importlib.import_module("threadpoolctl").ThreadpoolController()
    except ImportError:
        return None


def blas_threads(xp: Any, limit: int | None) -> AbstractContextManager:
    """Cap the host BLAS thread pool while a pack trains.

    Many small GEMMs (a few MFLOP each) lose more to waking BLAS threads than they gain, and
    their timings swing with the machine's load; one thread makes them fast and steady. Without
    threadpoolctl (optional extra ``fast``), on CuPy, or with ``limit`` None: no change.
    """
    controller = _threadpool_controller() if limit is not None and is_numpy(xp) else None
    if controller is None:
        return nullcontext()
    return controller.limit(limits=limit, user_api="blas")
