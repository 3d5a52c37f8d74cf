"""The activation kernels, the SSR's sum and the update on CuPy, each one fused CUDA kernel.

On a GPU a small pack's step is bound by launching kernels, not by arithmetic (W4: the CPU time
of a step equalled its GPU time, benchmarks/RESULTS.md, "Sixteenth session"), and
``PlainKernels`` launches one kernel per ufunc: three for tanh's backward, five for softplus'
forward, and CuPy's einsum for the SSR several more. Here each is one ``ElementwiseKernel`` or
``ReductionKernel`` (compiled by CuPy on first use and cached on disk), and so are an update
(``loop.Trainer._step``, which also sets a block's divergence flag, ``_flagged_update``), the
first layer of one input feature (affine and activation), a one-output layer's backward product
with the slope below, and the residual 2 (prediction - y) with the SSR taken from it. Same
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
# The first layer of one input feature, affine and activation in one kernel: z = w x + b, a = act(z)
FIRST = {
    "identity": "a = z",
    "relu": "a = isnan(z) ? z : (z > 0 ? z : (T)0)",  # NaN stays NaN, as PlainKernels' maximum
    "tanh": "a = tanh(z)",
    **{name: body for name, (_, body) in FORWARD.items()},
}
# A one-output layer's backward product (an outer product w dz) times the slope of the activation
# below, in one kernel: the two steps' formulas in their order, so the same bits as both kernels
SLOPE = {
    "relu": ("T a", "d = (w * g) * (a > 0 ? (T)1 : (T)0)"),
    "tanh": ("T a", "d = (w * g) * (1 - a * a)"),
    "sigmoid": ("T a", "d = (w * g) * (a * (1 - a))"),
    "softplus": ("T z, T a", "d = (w * g) * exp(z - a)"),
}


class CupyKernels(PlainKernels):
    """``PlainKernels`` with one CUDA kernel per formula (CuPy only), and the SSR's sum."""

    def __init__(self, xp: Any) -> None:
        super().__init__(xp)
        self._forward = {name: xp.ElementwiseKernel(params, "T a", body, f"descent_{name}_forward")
                         for name, (params, body) in FORWARD.items()}
        self._backward = {name: xp.ElementwiseKernel(params, "T d", body, f"descent_{name}_backward")
                          for name, (params, body) in BACKWARD.items()}
        self._first = {name: xp.ElementwiseKernel("T w, T x, T b", "T z, T a", f"z = w * x + b; {body}",
                                                  f"descent_{name}_first_layer") for name, body in FIRST.items()}
        self._outer = {name: xp.ElementwiseKernel(f"T w, T g, {params}", "T d", body, f"descent_{name}_outer_backward")
                       for name, (params, body) in SLOPE.items()}
        self._doubled = xp.ElementwiseKernel("T a, T y", "T d", "d = 2 * (a - y)", "descent_doubled_residual")
        self._sum_of_squares = xp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = a", "0",
                                                  "descent_sum_of_squares")
        # of a doubled residual: the sum of (2 r)^2 = 4 r^2 (exact, a power of 2), times 1/4 (exact)
        self._quarter_sum_of_squares = xp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = a * (T)0.25", "0",
                                                          "descent_quarter_sum_of_squares")
        self._any_nonfinite = xp.ReductionKernel("T x", "bool y", "isfinite(x) ? 0 : 1", "a | b", "y = a", "0",
                                                 "descent_any_nonfinite", reduce_type="int")
        # a still entry (lr 0: frozen or stopped) steps by exactly 0, not 0 * a gradient that may be inf
        # ... and with a flag (a raw output (1,), set where a new parameter is not finite: a block's
        # test; written by every such thread, all writing true)
        plain, momentum = "p_new = s ? p : p - lr * g", "T d = s ? (T)0 : lr * g; v_new = mu * v - d; p_new = p + v_new"
        flag = "; if (!isfinite(p_new)) f[0] = true"
        self._update = {
            (False, False): xp.ElementwiseKernel("T p, T g, T lr, bool s", "T p_new", plain, "descent_update"),
            (False, True): xp.ElementwiseKernel("T p, T g, T lr, bool s", "T p_new, raw bool f", plain + flag,
                                                "descent_flagged_update"),
            (True, False): xp.ElementwiseKernel("T p, T v, T g, T lr, T mu, bool s", "T p_new, T v_new", momentum,
                                                "descent_momentum_update"),
            (True, True): xp.ElementwiseKernel("T p, T v, T g, T lr, T mu, bool s", "T p_new, T v_new, raw bool f",
                                               momentum + flag, "descent_flagged_momentum_update"),
        }

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

    def affine_forward(self, name: str, block: Any, x: Any, buf: Any) -> bool:
        """buf.z = W x + b and buf.a = act(buf.z) for a first layer of one input feature (model
        first: block [W | b]^T (M, 2, o), x the data row (P,)), in one kernel; True when done."""
        kernel = self._first.get(name)
        if kernel is None or block.shape[1] != 2:
            return False
        kernel(block[:, 0, :, None], x, block[:, 1, :, None], buf.z, buf.a)
        return True

    def outer_backward(self, name: str, weight_t: Any, dz: Any, below: Any) -> bool:
        """below.d = W^T dz act'(z_below) for a one-output layer (weight_t (M, i, 1), dz (M, 1, P)),
        in one kernel; False (nothing done) for an identity activation below."""
        kernel = self._outer.get(name)
        if kernel is None:
            return False
        kernel(weight_t, dz, *((below.z, below.a) if name == "softplus" else (below.a,)), below.d)
        return True

    def doubled_residual(self, prediction: Any, y: Any, out: Any) -> None:
        """out = 2 (prediction - y), dSSR/dprediction, in one kernel (the SSR then from it:
        ``sum_of_squares`` with quarter)."""
        self._doubled(prediction, y, out)

    def sum_of_squares(self, residual: Any, axis: tuple[int, ...], out: Any, quarter: bool = False) -> Any:
        """out = (residual ** 2).sum(axis) (times 1/4 with ``quarter``) in one kernel (a new array
        when ``out`` is None)."""
        kernel = self._quarter_sum_of_squares if quarter else self._sum_of_squares
        return kernel(residual, axis=axis, out=out)

    def any_nonfinite(self, x: Any, flag: Any) -> None:
        """flag (1,) = whether any entry of x is NaN or infinite, in one kernel."""
        self._any_nonfinite(x, axis=None, out=flag.reshape(()))

    def update(self, buffers: UpdateBuffers, rates: Rates, still: Any, flag: Any = None) -> None:
        """The new parameters (and velocity) into the spare buffers, as ``loop.Trainer._delta``
        then ``_apply`` compute them, in one kernel (``still``: None when every entry moves);
        given ``flag`` (device bool (1,)), also set it where a new parameter is not finite (it
        is never cleared here)."""
        s = False if still is None else still
        kernel = self._update[rates.mu is not None, flag is not None]
        flags = () if flag is None else (flag,)
        if rates.mu is None:
            kernel(buffers.params, buffers.grad, rates.lr, s, buffers.spare, *flags)
        else:
            kernel(buffers.params, buffers.velocity, buffers.grad, rates.lr, rates.mu, s,
                   buffers.spare, buffers.spare_velocity, *flags)
