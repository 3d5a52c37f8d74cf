"""The activation kernels and the SSR's sum on CuPy, each formula one fused CUDA kernel.

On a GPU a small pack's step is bound by launching kernels, not by arithmetic (W4: the CPU time
of a step equalled its GPU time, benchmarks/RESULTS.md, "Sixteenth session"), and
``PlainKernels`` launches one kernel per ufunc: three for tanh's backward, five for softplus'
forward, and CuPy's einsum for the SSR several more. Here each is one ``ElementwiseKernel`` or
``ReductionKernel`` (compiled by CuPy on first use and cached on disk). Same formulas as
``activations.NumexprKernels``; the device's rounding (and fused multiply-adds) make the last
bits differ from NumPy's, within the tolerance tests/engine/test_cupy.py holds CuPy to.
"""

from __future__ import annotations

from typing import Any

from services.engine.activations import PlainKernels

FORWARD = {  # a = act(z); relu, tanh and identity are one ufunc already (PlainKernels)
    "sigmoid": ("T z", "a = 1 / (1 + exp(-z))"),
    "softplus": ("T z", "a = (z > 0 ? z : (T)0) + log1p(exp(-fabs(z)))"),
}
BACKWARD = {  # d = dSSR/da * act'(z), in place
    "relu": ("T a", "d = d * (a > 0 ? (T)1 : (T)0)"),  # d * (a > 0), as PlainKernels: NaN stays NaN
    "tanh": ("T a", "d = d * (1 - a * a)"),
    "sigmoid": ("T a", "d = d * (a * (1 - a))"),
    "softplus": ("T z, T a", "d = d * exp(z - a)"),
}


class CupyKernels(PlainKernels):
    """``PlainKernels`` with one CUDA kernel per formula (CuPy only), and the SSR's sum."""

    def __init__(self, xp: Any) -> None:
        super().__init__(xp)
        self._forward = {name: xp.ElementwiseKernel(params, "T a", body, f"descent_{name}_forward")
                         for name, (params, body) in FORWARD.items()}
        self._backward = {name: xp.ElementwiseKernel(params, "T d", body, f"descent_{name}_backward")
                          for name, (params, body) in BACKWARD.items()}
        self._sum_of_squares = xp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = a", "0",
                                                  "descent_sum_of_squares")

    def forward(self, name: str, buf: Any) -> Any:
        """As ``PlainKernels.forward``."""
        kernel = self._forward.get(name)
        if kernel is None:
            return super().forward(name, buf)
        kernel(buf.z, buf.a)
        return buf.a

    def backward(self, name: str, buf: Any) -> Any:
        """As ``PlainKernels.backward``."""
        kernel = self._backward.get(name)
        if kernel is None:
            return buf.d  # identity
        kernel(*((buf.z, buf.a) if name == "softplus" else (buf.a,)), buf.d)
        return buf.d

    def sum_of_squares(self, residual: Any, axis: tuple[int, ...], out: Any) -> Any:
        """out = (residual ** 2).sum(axis) in one kernel (a new array when ``out`` is None)."""
        return self._sum_of_squares(residual, axis=axis, out=out)
