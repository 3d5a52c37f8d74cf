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

FLAGS = dict(error_model="numpy", fastmath={"contract"})
F = np.float32
LN2_HI, LN2_LO = F(0.693145751953125), F(1.428606765330187e-06)  # ln 2 = HI + LO in float32
LOG2E, HALF, ONE, TWO = F(1.4426950408889634), F(0.5), F(1.0), F(2.0)


@intrinsic
def _pow2(typingctx: Any, k: Any) -> Any:
    """2.0 ** k for an integer-valued float32 k in [-126, 127]: in 2^23 + (k + 127) the low
    mantissa bits hold k + 127, which a shift by 23 moves into the exponent field."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        shifted = builder.fadd(args[0], ir.Constant(ir.FloatType(), 8388608.0 + 127.0))
        bits = builder.bitcast(shifted, ir.IntType(32))
        return builder.bitcast(builder.shl(bits, ir.Constant(ir.IntType(32), 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@njit(inline="always", **FLAGS)
def exp_nonpositive(x: float) -> float:
    """exp(x) for float32 x <= 0 (below -87, where float32 goes subnormal, 0; NaN stays NaN):
    2^k exp(r) with |r| <= ln2 / 2 and exp(r) by its Taylor series to degree 7."""
    k = np.floor(x * LOG2E + HALF)
    r = (x - k * LN2_HI) - k * LN2_LO
    r2 = r * r
    low = (ONE + r) + r2 * (HALF + r * F(1 / 6))
    high = (F(1 / 24) + r * F(1 / 120)) + r2 * (F(1 / 720) + r * F(1 / 5040))
    value = (low + r2 * r2 * high) * _pow2(max(k, F(-126)))
    return F(0) if x < F(-87) else value


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
    """tanh(x) in float32: (1 - e) / (1 + e), e = exp(-2|x|), with the sign of x; for |x| < 0.3
    (where 1 - e would cancel more than a bit) the odd series to x^11."""
    e = exp_nonpositive(-TWO * abs(x))
    far = math.copysign((ONE - e) / (ONE + e), x)
    t = x * x
    t2 = t * t
    near = x * ((ONE - t * F(1 / 3)) + t2 * (F(2 / 15) - t * F(17 / 315))
                + t2 * t2 * (F(62 / 2835) - t * F(1382 / 155925)))
    return near if abs(x) < F(0.3) else far


@njit(cache=True, nogil=True, **FLAGS)
def _tanh(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        t = tanh(z[k])
        a[k] = t
        slope[k] = ONE - t * t


@njit(cache=True, nogil=True, **FLAGS)
def _softplus(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        x = z[k]
        e = exp_nonpositive(-abs(x))
        a[k] = (F(0) if x <= 0 else x) + log1p_unit(e)
        slope[k] = (ONE if x >= 0 else e) / (ONE + e)


@njit(cache=True, nogil=True, **FLAGS)
def _sigmoid(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        x = z[k]
        e = exp_nonpositive(-abs(x))
        s = (ONE if x >= 0 else e) / (ONE + e)
        a[k] = s
        slope[k] = s * (ONE - s)


KERNELS = {"tanh": _tanh, "softplus": _softplus, "sigmoid": _sigmoid}
