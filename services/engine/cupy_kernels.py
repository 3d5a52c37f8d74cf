"""The activation kernels, the SSR's sum and the update on CuPy, each one fused CUDA kernel.

On a GPU a small pack's step is bound by launching kernels, not by arithmetic (W4: the CPU time
of a step equalled its GPU time, benchmarks/RESULTS.md, "Sixteenth session"), and
``PlainKernels`` launches one kernel per ufunc: three for tanh's backward, five for softplus'
forward, and CuPy's einsum for the SSR several more. Here each is one ``ElementwiseKernel`` or
``ReductionKernel`` (compiled by CuPy on first use and cached on disk), and so are an update
(``loop.Trainer._step``) and a block's divergence test (``loop.Trainer._flagged_update``). Same
formulas as ``activations.NumexprKernels`` and the loop's; the device's rounding (and fused
multiply-adds) make the last bits differ from NumPy's, within the tolerance that
tests/engine/test_cupy.py holds CuPy to.
"""

from __future__ import annotations

from typing import Any

from services.engine.activations import PlainKernels
from services.engine.network import Rates, UpdateBuffers

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
        self._any_nonfinite = xp.ReductionKernel("T x", "bool y", "isfinite(x) ? 0 : 1", "a | b", "y = a", "0",
                                                 "descent_any_nonfinite", reduce_type="int")
        # a still entry (lr 0: frozen or stopped) steps by exactly 0, not 0 * a gradient that may be inf
        self._update = xp.ElementwiseKernel("T p, T g, T lr, bool s", "T p_new",
                                            "p_new = s ? p : p - lr * g", "descent_update")
        self._momentum_update = xp.ElementwiseKernel(
            "T p, T v, T g, T lr, T mu, bool s", "T p_new, T v_new",
            "T d = s ? (T)0 : lr * g; v_new = mu * v - d; p_new = p + v_new", "descent_momentum_update")

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

    def any_nonfinite(self, x: Any, flag: Any) -> None:
        """flag (1,) = whether any entry of x is NaN or infinite, in one kernel."""
        self._any_nonfinite(x, axis=None, out=flag.reshape(()))

    def update(self, buffers: UpdateBuffers, rates: Rates, still: Any) -> None:
        """The new parameters (and velocity) into the spare buffers, as ``loop.Trainer._delta``
        then ``_apply`` compute them, in one kernel (``still``: None when every entry moves)."""
        s = False if still is None else still
        if rates.mu is None:
            self._update(buffers.params, buffers.grad, rates.lr, s, buffers.spare)
        else:
            self._momentum_update(buffers.params, buffers.velocity, buffers.grad, rates.lr, rates.mu, s,
                                  buffers.spare, buffers.spare_velocity)
