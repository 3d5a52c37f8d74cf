"""Activation functions and their derivatives, computed in place into preallocated buffers.

Each transcendental is evaluated once per forward pass and reused by the backward pass:
softplus gets its derivative sigmoid(z) = exp(z - softplus(z)) (never overflows since
z <= softplus(z)); relu, sigmoid and tanh derive from their own outputs. Kernels read and write
the buffers of one layer (``LayerBuffers``: z, a, aux, scratch, zeros, d). Two interchangeable
implementations here: ``PlainKernels`` (any xp, one ufunc per op with ``out=``) and
``NumexprKernels`` (NumPy only, one fused multithreaded numexpr kernel per formula); a third,
``numba_kernels.NumbaKernels``, is the default where numba is installed. They agree to
rounding. Which is fastest depends on the CPU's SIMD math (benchmarks/RESULTS.md, "Engine").
"""

from __future__ import annotations

import math
from typing import Any

LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x * log2(e)): NumPy's exp2 kernel, not exp


class PlainKernels:
    """Activation forward/backward with xp ufuncs; works for NumPy and CuPy alike."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def forward(self, name: str, buf: Any) -> Any:
        """buf.a = act(buf.z) (identity: buf.a is buf.z, or a copy into it); returns buf.a."""
        xp, z, a = self.xp, buf.z, buf.a
        if name == "identity":
            if a is not z:
                xp.copyto(a, z)
            return a
        if name == "relu":  # against an array of zeros: NumPy's scalar-operand maximum is slow
            return xp.maximum(z, buf.zeros, out=a)
        if name == "tanh":
            return xp.tanh(z, out=a)
        if name == "sigmoid":  # 1 / (1 + exp(-z)): exp may overflow to inf, giving exactly 0
            xp.multiply(z, -LOG2E, out=a)
            xp.exp2(a, out=a)
            a += 1
            return xp.reciprocal(a, out=a)
        # softplus, stable: max(z, 0) + log1p(exp(-|z|))
        e = buf.aux
        xp.abs(z, out=e)
        xp.multiply(e, -LOG2E, out=e)
        xp.exp2(e, out=e)
        xp.log1p(e, out=a)
        a += xp.maximum(z, buf.zeros, out=buf.scratch)
        return a

    def backward(self, name: str, buf: Any) -> Any:
        """buf.d = dSSR/da * act'(z), in place (returned); z and a as left by ``forward``."""
        xp, d, s = self.xp, buf.d, buf.scratch
        if name == "identity":
            return d
        if name == "relu":
            return xp.multiply(d, buf.a > 0, out=d)
        if name == "tanh":  # 1 - a^2
            xp.multiply(buf.a, buf.a, out=s)
            xp.subtract(1, s, out=s)
        elif name == "sigmoid":  # a (1 - a)
            xp.subtract(1, buf.a, out=s)
            s *= buf.a
        else:  # softplus' = sigmoid(z) = exp(z - softplus(z))
            xp.subtract(buf.z, buf.a, out=s)
            s *= LOG2E
            xp.exp2(s, out=s)
        return xp.multiply(d, s, out=d)


class NumexprKernels:
    """The same formulas as fused numexpr kernels (NumPy arrays only, multithreaded)."""

    FORWARD = {
        "relu": "where(z > 0, z, 0)",
        "tanh": "tanh(z)",
        "sigmoid": "1 / (1 + exp(-z))",
        "softplus": "log1p(exp(-abs(z))) + where(z > 0, z, 0)",
    }
    BACKWARD = {
        "relu": "where(a > 0, d, 0)",
        "tanh": "d * (1 - a * a)",
        "sigmoid": "d * (a * (1 - a))",
        "softplus": "d * exp(z - a)",
    }

    def __init__(self, numexpr: Any) -> None:
        self.ne = numexpr

    def forward(self, name: str, buf: Any) -> Any:
        """As ``PlainKernels.forward``."""
        if name != "identity" and buf.a.flags.c_contiguous:
            return self.ne.evaluate(self.FORWARD[name], local_dict={"z": buf.z}, out=buf.a)
        if name != "identity":  # numexpr writes only contiguous outputs
            self.ne.evaluate(self.FORWARD[name], local_dict={"z": buf.z}, out=buf.scratch)
        if buf.a is not buf.z:
            buf.a[...] = buf.scratch if name != "identity" else buf.z
        return buf.a

    def backward(self, name: str, buf: Any) -> Any:
        """As ``PlainKernels.backward``."""
        if name == "identity":
            return buf.d
        names = {"d": buf.d, "z": buf.z, "a": buf.a}
        return self.ne.evaluate(self.BACKWARD[name], local_dict=names, out=buf.d)
