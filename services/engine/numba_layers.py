"""The element-wise pieces of the fused wide step (``numba_wide``), compiled with numba.

Each picks the kernel of ``numba_kernels`` (float64) or ``numba_float32`` for the arrays' dtype
when the step is compiled, and the layer's activation by a code at run time (``CODES``), so one
compilation per dtype serves every network.
"""

from __future__ import annotations

from typing import Any

from numba import njit, types
from numba.extending import overload

from services.engine import numba_float32 as f32
from services.engine import numba_kernels as nk

FLAGS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
IDENTITY, RELU, TANH, SIGMOID, SOFTPLUS = range(5)  # a layer's activation, as compiled code sees it (numba_tiny too)
CODES = {"identity": IDENTITY, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID, "softplus": SOFTPLUS}


def activate(code: int, z: Any, a: Any, slope: Any) -> None:
    """a = act(z), slope = act'(z) for flat contiguous arrays of one dtype (not identity)."""


@overload(activate)
def _activate(code, z, a, slope):  # noqa: ANN001, ANN202
    module = f32 if z.dtype == types.float32 else nk
    tanh, softplus, sigmoid, relu = module._tanh, module._softplus, module._sigmoid, nk._relu

    def impl(code, z, a, slope):  # noqa: ANN001, ANN202
        if code == RELU:
            relu(z, a, slope)
        elif code == TANH:
            tanh(z, a, slope)
        elif code == SIGMOID:
            sigmoid(z, a, slope)
        else:
            softplus(z, a, slope)
    return impl


def affine_first(code: int, block: Any, x: Any, a: Any, slope: Any) -> bool:
    """a[:o] = act(w x + b) and slope for a first layer of one input: True when a fused kernel
    did it (tanh, softplus), False (nothing done) otherwise."""


@overload(affine_first)
def _affine_first(code, block, x, a, slope):  # noqa: ANN001, ANN202
    kernels = f32.AFFINE_KERNELS if a.dtype == types.float32 else nk.AFFINE_KERNELS
    tanh, softplus = kernels["tanh"], kernels["softplus"]

    def impl(code, block, x, a, slope):  # noqa: ANN001, ANN202
        n, points = slope.shape
        target, slopes = a.reshape((1, a.shape[0], points)), slope.reshape((1, n, points))
        w, b = block[0:1, :], block[1:2, :]
        if code == TANH:
            tanh(w, b, x[0], target, slopes)
        elif code == SOFTPLUS:
            softplus(w, b, x[0], target, slopes)
        else:
            return False
        return True
    return impl


@njit(**FLAGS)
def times_slope(d: Any, slope: Any) -> None:
    """d *= slope (dSSR/da to dSSR/dz), flat."""
    for k in range(d.size):
        d[k] *= slope[k]
