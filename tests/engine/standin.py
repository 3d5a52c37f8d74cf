"""A stand-in for CuPy on the CPU: NumPy's functions under another module object.

The engine takes its device paths wherever the namespace is not NumPy itself: the plain
activation kernels instead of numba's, one chunk per pass, updates in blocks with the stop tests
read once per block, host copies through ``asnumpy``. With this stand-in those paths run in every
test run, not only on a lent GPU (tests/engine/test_cupy.py runs each of its tests on it too).
It is not a model of a GPU: the arithmetic is NumPy's, and nothing here is asynchronous.
"""

from __future__ import annotations

import types

import numpy as np


def make_standin() -> types.ModuleType:
    """A module with NumPy's public names, plus CuPy's ``asnumpy``; ``is_numpy`` is False for it."""
    module = types.ModuleType("cupy_standin", __doc__)
    module.__dict__.update({name: getattr(np, name) for name in dir(np) if not name.startswith("_")})
    module.asnumpy = np.asarray
    module.__version__ = f"numpy {np.__version__} (a CPU stand-in for CuPy)"
    return module


STANDIN = make_standin()
