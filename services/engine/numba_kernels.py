"""Activation kernels compiled with numba (optional extra ``fast``): one pass per layer.

Why: NumPy evaluates exp, log1p and tanh with SIMD code only on some CPUs and dtypes (float64
exp on AVX-512, float32 exp on AVX2); elsewhere each element is a scalar libm call, and the
activations then cost more than the matrix products (figures: benchmarks/RESULTS.md,
"Engine"). Here exp, log1p and tanh are short polynomials written with + - * / only, so LLVM
vectorizes the loops on any x86-64 CPU (AVX2 or AVX-512), and each layer's activation and its
derivative come out of one pass over memory instead of four to ten.

Accuracy: every function is within 4 ulp of NumPy's (tests/engine/test_numba.py checks them
over their whole range); float32 arrays get the float32 versions of ``numba_float32``. The only
liberty given to LLVM is fusing a multiply and an add (``fastmath={"contract"}``), never
reordering: a value does not depend on the vector width or on its position in the array, so a
pack still rounds exactly like its members alone, and a run repeats bit for bit on a machine.
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

LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # ln 2 = HI + LO
LOG2E = 1.44269504088896338700e+00
SHIFT = 4503599627370496.0 + 1023.0  # 2^52 + 1023: adding it rounds to an integer, biased


@intrinsic
def _pow2_of_shifted(typingctx: Any, shifted: Any) -> Any:
    """2.0 ** k from shifted = 2^52 + 1023 + k (k an integer in [-1022, 1023]), without a
    float-to-int conversion (AVX2 has none for vectors): the low mantissa bits of ``shifted``
    hold k + 1023, which a shift by 52 moves into the exponent field."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        bits = builder.bitcast(args[0], ir.IntType(64))
        return builder.bitcast(builder.shl(bits, ir.Constant(ir.IntType(64), 52)), ir.DoubleType())
    return types.float64(types.float64), codegen


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def reduce_ln2(x: float) -> tuple[float, float]:
    """(r, 2^k) with x = k ln2 + r, |r| <= ln2 / 2, for x in [-708, 0] (else garbage, which
    callers select away). x log2(e) + SHIFT rounds to the integer k (the ulp there is 1) in
    one fused multiply-add, which also leaves k + 1023 in the bits for 2^k."""
    shifted = x * LOG2E + SHIFT
    k = shifted - SHIFT
    r = (x - k * LN2_HI) - k * LN2_LO
    return r, _pow2_of_shifted(shifted)


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def exp_taylor(r: float) -> float:
    """exp(r) - 1 by its Taylor series to degree 13: below 2^-53 relative for |r| <= ln2 / 2.

    r (1 + r/2! + ... + r^12/13!), the polynomial in Estrin's scheme (pairs, then powers of r
    in a tree) rather than Horner's: the same terms, but a dependency chain of 5 steps instead
    of 12, so the CPU overlaps them. Written out (no loop) so that LLVM vectorizes around it."""
    r2 = r * r
    r4 = r2 * r2
    low = (1.0 + r * (1.0 / 2)) + r2 * (1.0 / 6 + r * (1.0 / 24))
    mid = (1.0 / 120 + r * (1.0 / 720)) + r2 * (1.0 / 5040 + r * (1.0 / 40320))
    high = (1.0 / 362880 + r * (1.0 / 3628800)) + r2 * (1.0 / 39916800 + r * (1.0 / 479001600)) \
        + r4 * (1.0 / 6227020800)
    return r * (low + r4 * (mid + r4 * high))


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def exp_nonpositive(x: float) -> float:
    """exp(x) for x <= 0 (NaN stays NaN; below -708, where float64 goes subnormal, 0).
    x = k ln2 + r with |r| <= ln2 / 2, so exp(x) = 2^k (1 + exp_taylor(r))."""
    r, scale = reduce_ln2(x)
    value = (1.0 + exp_taylor(r)) * scale
    return 0.0 if x < -708.0 else value


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def expm1_nonpositive(x: float) -> float:
    """exp(x) - 1 for x <= 0 (NaN stays NaN; below -708, -1), accurate also near 0:
    2^k (1 + p) - 1 = 2^k p + (2^k - 1) with p = exp_taylor(r); 2^k - 1 is exact, and for
    k = 0 the result is p itself (no cancellation), so no second formula is needed near 0."""
    r, scale = reduce_ln2(x)
    value = scale * exp_taylor(r) + (scale - 1.0)
    return -1.0 if x < -708.0 else value


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def log1p_unit(e: float) -> float:
    """log(1 + e) for e in [0, 1]: 2 atanh(s) with s = e / (2 + e) <= 1/3, by its series
    2 s (1 + t/3 + t^2/5 + ...), t = s^2, to t^15 (the first term left out is below 2^-53
    relative)."""
    s = e / (2.0 + e)
    t = s * s
    t2 = t * t
    t4 = t2 * t2
    low = (1.0 + t * (1.0 / 3)) + t2 * (1.0 / 5 + t * (1.0 / 7))
    mid = (1.0 / 9 + t * (1.0 / 11)) + t2 * (1.0 / 13 + t * (1.0 / 15))
    high = (1.0 / 17 + t * (1.0 / 19)) + t2 * (1.0 / 21 + t * (1.0 / 23))
    top = (1.0 / 25 + t * (1.0 / 27)) + t2 * (1.0 / 29 + t * (1.0 / 31))
    p = low + t4 * (mid + t4 * (high + t4 * top))  # Estrin's scheme, as in exp_taylor
    return 2.0 * s * p


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def tanh(x: float) -> float:
    """tanh(x), NaN stays NaN: with m = expm1(-2|x|) in [-1, 0], tanh|x| = -m / (2 + m), and
    the sign of x. One formula for the whole range (expm1 is accurate near 0), so each value
    costs one polynomial and one division: the kernels are bound by arithmetic throughput."""
    m = expm1_nonpositive(-2.0 * abs(x))
    return math.copysign(-m / (2.0 + m), x)


# Each kernel: z -> a = act(z) and slope = act'(z), in one pass over flat contiguous arrays
# (a flat loop over three arrays vectorizes better than nested loops).

@njit(inline="always", error_model="numpy", fastmath={"contract"})
def tanh_and_slope(x: float) -> tuple[float, float]:
    t = tanh(x)
    return t, 1.0 - t * t


@njit(inline="always", error_model="numpy", fastmath={"contract"})
def softplus_and_slope(x: float) -> tuple[float, float]:
    """softplus(x) = max(x, 0) + log(1 + e^-|x|), and its slope sigmoid(x)."""
    e = exp_nonpositive(-abs(x))
    return (0.0 if x <= 0 else x) + log1p_unit(e), (1.0 if x >= 0 else e) / (1.0 + e)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _tanh(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        a[k], slope[k] = tanh_and_slope(np.float64(z[k]))


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _softplus(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        a[k], slope[k] = softplus_and_slope(np.float64(z[k]))


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _sigmoid(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        x = np.float64(z[k])
        e = exp_nonpositive(-abs(x))
        s = (1.0 if x >= 0 else e) / (1.0 + e)
        a[k] = s
        slope[k] = s * (1.0 - s)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _relu(z: Any, a: Any, slope: Any) -> None:
    for k in range(z.size):
        x = z[k]
        a[k] = 0.0 if x <= 0 else x  # NaN stays NaN, as in np.maximum
        slope[k] = 1.0 if x > 0 else 0.0


KERNELS = {"tanh": _tanh, "softplus": _softplus, "sigmoid": _sigmoid, "relu": _relu}


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _outer_times_slope(w: Any, dz: Any, slope: Any, out: Any) -> None:
    """out[m, i, p] = (w[m, i] dz[m, p]) slope[m, i, p]: the gradient through a one-output
    layer (an outer product) and the activation below it, in one pass. Rounded exactly like the
    two NumPy multiplies it replaces (product first, then the slope)."""
    for m in range(out.shape[0]):
        for i in range(out.shape[1]):
            weight = w[m, i]
            for p in range(out.shape[2]):
                out[m, i, p] = (weight * dz[m, p]) * slope[m, i, p]


# The first layer of a network with one input feature, with its activation, in one pass:
# a[m, j, p] = act(w[m, j] x[p] + b[m, j]) and the slope. As a matrix product its inner
# dimension is 2 (x and the row of ones), which BLAS runs far below its peak, and z then makes
# one more trip through memory; here z never leaves a register.

@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _affine_tanh(w: Any, b: Any, x: Any, a: Any, slope: Any) -> None:
    for m in range(slope.shape[0]):
        for j in range(slope.shape[1]):
            wj, bj = np.float64(w[m, j]), np.float64(b[m, j])
            for p in range(x.size):
                a[m, j, p], slope[m, j, p] = tanh_and_slope(wj * np.float64(x[p]) + bj)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _affine_softplus(w: Any, b: Any, x: Any, a: Any, slope: Any) -> None:
    for m in range(slope.shape[0]):
        for j in range(slope.shape[1]):
            wj, bj = np.float64(w[m, j]), np.float64(b[m, j])
            for p in range(x.size):
                a[m, j, p], slope[m, j, p] = softplus_and_slope(wj * np.float64(x[p]) + bj)


AFFINE_KERNELS = {"tanh": _affine_tanh, "softplus": _affine_softplus}
from services.engine.numba_float32 import AFFINE_KERNELS as FLOAT32_AFFINE_KERNELS  # noqa: E402 (after ours)
from services.engine.numba_float32 import KERNELS as FLOAT32_KERNELS  # noqa: E402


def contiguous_parts(*arrays: Any) -> list[tuple[Any, ...]]:
    """Flat views of the arrays: whole when all are C-contiguous, else member by member (model
    first, a is a view that skips the row of ones between members; each member's part is
    contiguous). LLVM vectorizes only loops over contiguous memory."""
    if all(a.flags.c_contiguous for a in arrays):
        return [tuple(a.reshape(-1) for a in arrays)]
    return [tuple(a[i].reshape(-1) for a in arrays) for i in range(arrays[0].shape[0])]


class NumbaKernels:
    """Activation forward/backward for NumPy arrays (the interface of ``PlainKernels``).

    ``forward`` also stores act'(z) in ``buf.slope``, so ``backward`` is one multiply."""

    def forward(self, name: str, buf: Any) -> Any:
        """buf.a = act(buf.z) and buf.slope = act'(buf.z); returns buf.a."""
        if name == "identity":
            if buf.a is not buf.z:
                np.copyto(buf.a, buf.z)
            return buf.a
        kernel = KERNELS[name]
        if buf.z.dtype == np.float32 and name in FLOAT32_KERNELS:  # float32 math, twice the lanes
            kernel = FLOAT32_KERNELS[name]
        for z, a, slope in contiguous_parts(buf.z, buf.a, buf.slope):
            kernel(z, a, slope)
        return buf.a

    def affine_forward(self, name: str, block: Any, x: Any, buf: Any) -> bool:
        """buf.a = act(W x + b) and buf.slope for a first layer of one input feature (model
        first: block [W | b]^T (M, 2, o), x the data row (P,)), without writing buf.z; True when
        done, False (nothing done) for activations without a fused kernel."""
        kernels = FLOAT32_AFFINE_KERNELS if buf.slope.dtype == np.float32 else AFFINE_KERNELS
        if name not in kernels or block.shape[1] != 2:
            return False
        # a is a view of next_input that skips each member's row of ones: the kernel writes into
        # next_input itself, whose C layout tells numba that points are contiguous (a strided
        # view would not vectorize); the ones rows are left alone (j < width).
        target = buf.next_input if buf.next_input.shape[1] == buf.a.shape[1] + 1 else buf.a
        if not (target.flags.c_contiguous and buf.slope.flags.c_contiguous and x.flags.c_contiguous):
            return False
        kernels[name](block[:, 0, :], block[:, 1, :], x, target, buf.slope)
        return True

    def backward(self, name: str, buf: Any) -> Any:
        """buf.d *= act'(z), in place (returned)."""
        if name == "identity":
            return buf.d
        return np.multiply(buf.d, buf.slope, out=buf.d)

    def outer_backward(self, name: str, weight_t: Any, dz: Any, below: Any) -> bool:
        """below.d = W^T dz act'(z_below) for a one-output layer (weight_t (M, i, 1), dz (M, 1, P)):
        its backward product and the backward of the activation below, fused; True when done.

        Why: as NumPy ops this is an outer product (with a copy of the strided weights), then a
        second pass over d for the slope; fused, d is written once. False (nothing done) for an
        identity activation below or non-contiguous buffers: the caller then does both steps."""
        arrays = (dz, below.slope, below.d)
        if name == "identity" or not all(a.flags.c_contiguous for a in arrays):
            return False
        _outer_times_slope(weight_t[:, :, 0], dz[:, 0, :], below.slope, below.d)
        return True
