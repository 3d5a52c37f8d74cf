"""The activation kernels of ``numba_kernels`` for float32 arrays, computed in float32.

The same formulas with float32 constants and shorter series (float32 needs 2^-24, not 2^-53),
so every operation stays in float32 and a vector holds twice as many values as in float64.
Each function is within a few float32 ulp of NumPy's (tests/engine/test_numba.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from services.engine.numba_target import prefer_wide_vectors

prefer_wide_vectors()  # before the first compile: 512-bit vectors on AVX-512 CPUs

FLAGS = dict(error_model="numpy", fastmath={"contract"})
F = np.float32
LN2_HI, LN2_LO = F(0.693145751953125), F(1.428606765330187e-06)  # ln 2 = HI + LO in float32
LOG2E, HALF, ONE, TWO = F(1.4426950408889634), F(0.5), F(1.0), F(2.0)
SHIFT = F(8388608.0 + 127.0)  # 2^23 + 127: adding it rounds to an integer, biased


@intrinsic
def _pow2_of_shifted(typingctx: Any, shifted: Any) -> Any:
    """2.0 ** k from the float32 shifted = 2^23 + 127 + k (k an integer in [-126, 127]): the low
    mantissa bits hold k + 127, which a shift by 23 moves into the exponent field."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        bits = builder.bitcast(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(bits, ir.Constant(ir.IntType(32), 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@njit(inline="always", **FLAGS)
def reduce_ln2(x: float) -> tuple[float, float]:
    """(r, 2^k) with x = k ln2 + r, |r| <= ln2 / 2, for float32 x in [-87, 0] (else garbage,
    which callers select away); as ``numba_kernels.reduce_ln2``."""
    shifted = x * LOG2E + SHIFT
    k = shifted - SHIFT
    r = (x - k * LN2_HI) - k * LN2_LO
    return r, _pow2_of_shifted(shifted)


@njit(inline="always", **FLAGS)
def expm1_taylor(r: float) -> float:
    """exp(r) - 1 for float32 |r| <= ln2 / 2 by its Taylor series to degree 7 (below 2^-26
    relative), in Estrin's scheme."""
    r2 = r * r
    low = (ONE + r * HALF) + r2 * (F(1 / 6) + r * F(1 / 24))
    high = (F(1 / 120) + r * F(1 / 720)) + r2 * F(1 / 5040)
    return r * (low + r2 * r2 * high)


@njit(inline="always", **FLAGS)
def exp_nonpositive(x: float) -> float:
    """exp(x) for float32 x <= 0 (below -87, where float32 goes subnormal, 0; NaN stays NaN):
    2^k exp(r) with |r| <= ln2 / 2."""
    r, scale = reduce_ln2(x)
    value = (ONE + expm1_taylor(r)) * scale
    return F(0) if x < F(-87) else value


@njit(inline="always", **FLAGS)
def expm1_nonpositive(x: float) -> float:
    """exp(x) - 1 for float32 x <= 0 (below -87, -1; NaN stays NaN): 2^k p + (2^k - 1) with
    p = expm1_taylor(r), exact near 0 (see ``numba_kernels.expm1_nonpositive``)."""
    r, scale = reduce_ln2(x)
    value = scale * expm1_taylor(r) + (scale - ONE)
    return F(-1) if x < F(-87) else value


@njit(inline="always", **FLAGS)
def log1p_unit(e: float) -> float:
    """log(1 + e) for float32 e in [0, 1]: 2 atanh(e / (2 + e)) by its series to s^15."""
    s = e / (TWO + e)
    t = s * s
    t2 = t * t
    p = (ONE + t * F(1 / 3)) + t2 * (F(1 / 5) + t * F(1 / 7))
    q = (F(1 / 9) + t * F(1 / 11)) + t2 * (F(1 / 13) + t * F(1 / 15))
    return TWO * s * (p + t2 * t2 * q)


@njit(inline="always", **FLAGS)
def tanh(x: float) -> float:
    """tanh(x) in float32: -m / (2 + m) with m = expm1(-2|x|), and the sign of x (one formula
    for the whole range, as ``numba_kernels.tanh``)."""
    m = expm1_nonpositive(-TWO * abs(x))
    return math.copysign(-m / (TWO + m), x)


@njit(inline="always", **FLAGS)
def tanh_and_slope(x: float) -> tuple[float, float]:
    t = tanh(x)
    return t, ONE - t * t


@njit(inline="always", **FLAGS)
def softplus_and_slope(x: float) -> tuple[float, float]:
    e = exp_nonpositive(-abs(x))
    return (F(0) if x <= 0 else x) + log1p_unit(e), (ONE if x >= 0 else e) / (ONE + e)


@njit(cache=True, nogil=True, **FLAGS)
def _tanh(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        a[k], slope[k] = tanh_and_slope(z[k])


@njit(cache=True, nogil=True, **FLAGS)
def _softplus(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        a[k], slope[k] = softplus_and_slope(z[k])


@njit(cache=True, nogil=True, **FLAGS)
def _sigmoid(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        x = z[k]
        e = exp_nonpositive(-abs(x))
        s = (ONE if x >= 0 else e) / (ONE + e)
        a[k] = s
        slope[k] = s * (ONE - s)


KERNELS = {"tanh": _tanh, "softplus": _softplus, "sigmoid": _sigmoid}


@njit(cache=True, nogil=True, **FLAGS)
def _affine_tanh(w: Any, b: Any, x: Any, a: Any, slope: Any) -> None:
    """The first layer and its activation in one pass (see ``numba_kernels._affine_tanh``)."""
    for m in range(slope.shape[0]):
        for j in range(slope.shape[1]):
            wj, bj = w[m, j], b[m, j]
            for p in range(x.size):
                a[m, j, p], slope[m, j, p] = tanh_and_slope(wj * x[p] + bj)


@njit(cache=True, nogil=True, **FLAGS)
def _affine_softplus(w: Any, b: Any, x: Any, a: Any, slope: Any) -> None:
    for m in range(slope.shape[0]):
        for j in range(slope.shape[1]):
            wj, bj = w[m, j], b[m, j]
            for p in range(x.size):
                a[m, j, p], slope[m, j, p] = softplus_and_slope(wj * x[p] + bj)


AFFINE_KERNELS = {"tanh": _affine_tanh, "softplus": _affine_softplus}
