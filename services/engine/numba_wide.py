"""The model-first network with numba (optional extra ``fast``): a chunk's whole step in one call.

Why: ``WideNetwork.step`` makes about fifteen NumPy and numba calls per chunk of members, and on
two cores each call hands Python's GIL from one thread to the other. Measured on W4 (2-core AMD
Zen 3, float64): two independent trainings of half the pack on two threads ran 1.54x as fast as
one after the other, two processes 1.8x; the calls' own Python work was ~10% of a step. Here one
compiled call, which never takes the GIL, runs a chunk of members through forward, SSR and
backward, member by member (a member's activations stay in cache), with the same numba
activation kernels and, for the matrix products, NumPy's own OpenBLAS (``cblas_?gemm``, found
through threadpoolctl), so BLAS thread limits and CPU kernels are NumPy's.

Per member and layer (inputs carry a row of ones, blocks are [W | b]^T (i + 1, o)):
    forward   z = block^T [a; 1]          gemm, then a, slope = act(z), act'(z)
    backward  dz = d * slope               (folded into the layer above's product where o = 1)
              grad block = [a; 1] dz^T      gemm, straight into the gradient buffer
              d below = W dz                gemm (o = 1: an outer product, with the slope folded in)
A member's numbers do not depend on the pack around it (each member is its own products and
loops), so a pack still rounds exactly like its members alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import binding as llvm
from numba import njit, types
from numba.extending import overload

from services.engine import numba_float32 as f32
from services.engine import numba_kernels as nk
from services.engine.backend import threadpool_controller
from services.engine.layouts import WideLayer
from services.engine.model_first import WideNetwork

FLAGS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
IDENTITY, RELU, TANH, SIGMOID, SOFTPLUS = range(5)  # each layer's activation, as the compiled code sees it
CODES = {"identity": IDENTITY, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID, "softplus": SOFTPLUS}
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _register_blas() -> None:
    """Give NumPy's OpenBLAS ``cblas_sgemm``/``cblas_dgemm`` (64-bit integers) the names the
    compiled code calls. ImportError (this module is then not used) where NumPy's BLAS is not
    an ILP64 OpenBLAS that threadpoolctl can find."""
    np.ones((2, 2)) @ np.ones((2, 2))  # NumPy's BLAS is loaded by its first product
    controller = threadpool_controller()
    for lib in controller.lib_controllers if controller is not None else []:
        if lib.internal_api != "openblas":
            continue
        llvm.load_library_permanently(lib.filepath)  # already loaded by NumPy: its symbols, for the JIT
        for prefix in ("scipy_", ""):
            single, double = (llvm.address_of_symbol(f"{prefix}cblas_{t}gemm64_") for t in "sd")
            if single and double:
                llvm.add_symbol("descent_sgemm", single)
                llvm.add_symbol("descent_dgemm", double)
                return
    raise ImportError("numba_wide needs NumPy's BLAS to be an ILP64 OpenBLAS found by threadpoolctl")


_register_blas()


def _gemm_type(real: Any) -> Any:
    i32, i64, ptr = types.int32, types.int64, types.voidptr
    return types.void(i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64)


_SGEMM = types.ExternalFunction("descent_sgemm", _gemm_type(types.float32))
_DGEMM = types.ExternalFunction("descent_dgemm", _gemm_type(types.float64))


def gemm(trans_a: int, trans_b: int, a: Any, b: Any, c: Any, k: int) -> None:
    """c = op(a) op(b) (overwritten), row-major 2-D arrays with contiguous rows; k the inner size."""


@overload(gemm, inline="always")
def _gemm(trans_a, trans_b, a, b, c, k):  # noqa: ANN001, ANN202 - numba compares it with impl
    single = c.dtype == types.float32
    blas, real = (_SGEMM, np.float32) if single else (_DGEMM, np.float64)

    def impl(trans_a, trans_b, a, b, c, k):  # noqa: ANN001, ANN202 - numba matches the stub's names
        size = c.itemsize
        blas(ROW_MAJOR, trans_a, trans_b, c.shape[0], c.shape[1], k, real(1.0), a.ctypes, a.strides[0] // size,
             b.ctypes, b.strides[0] // size, real(0.0), c.ctypes, c.strides[0] // size)
    return impl


def activate(code: int, z: Any, a: Any, slope: Any) -> None:
    """a = act(z), slope = act'(z) for flat contiguous arrays of one dtype."""


@overload(activate, inline="always")
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
        elif code == SOFTPLUS:
            softplus(z, a, slope)
        else:  # identity
            a[:] = z
    return impl


def affine_first(code: int, block: Any, x: Any, a: Any, slope: Any) -> bool:
    """a[:o] = act(w x + b) and slope for a first layer of one input: True when a fused kernel
    did it (tanh, softplus), False (nothing done) otherwise."""


@overload(affine_first, inline="always")
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
def _times_slope(d: Any, slope: Any) -> None:
    for k in range(d.size):
        d[k] *= slope[k]


@njit(**FLAGS)
def _outer_times_slope(w: Any, dz: Any, slope: Any, out: Any) -> None:
    """out[i, p] = (w[i, 0] dz[0, p]) slope[i, p]: back through a one-output layer (an outer
    product) and the activation below, in one pass, rounded like ``numba_kernels``'."""
    for i in range(out.shape[0]):
        weight = w[i, 0]
        for p in range(out.shape[1]):
            out[i, p] = (weight * dz[0, p]) * slope[i, p]


@njit(**FLAGS)
def _forward(blocks: Any, m: int, x: Any, z: Any, acts: Any, slopes: Any, codes: Any) -> None:
    """One member's forward pass: every layer's activation (with its row of ones) and slope."""
    inputs = x
    for layer in range(len(blocks)):
        block, a, slope, code = blocks[layer][m], acts[layer], slopes[layer], codes[layer]
        n = block.shape[1]
        size = n * a.shape[1]
        if layer == 0 and block.shape[0] == 2 and affine_first(code, block, x, a, slope):
            inputs = a
            continue
        if code == IDENTITY:  # z is a itself
            gemm(TRANS, NO_TRANS, block, inputs, a[:n], block.shape[0])
        else:
            out = z[:size].reshape((n, a.shape[1]))
            gemm(TRANS, NO_TRANS, block, inputs, out, block.shape[0])
            activate(code, z[:size], a.reshape(a.size)[:size], slope.reshape(size))
        inputs = a


@njit(**FLAGS)
def _residual(a: Any, y: Any, d: Any) -> float:
    """d = 2 (prediction - y) = dSSR/dprediction; returns the SSR, summed point by point in
    float64 (a fixed order, whatever the pack)."""
    total = 0.0
    for o in range(y.shape[0]):
        for p in range(y.shape[1]):
            r = a[o, p] - y[o, p]
            total += r * r
            d[o, p] = r + r
    return total


@njit(**FLAGS)
def _backward(blocks: Any, grads: Any, m: int, x: Any, acts: Any, slopes: Any, ds: Any, codes: Any) -> None:
    """One member's backward pass from ds[-1] = dSSR/dprediction: gradients into ``grads``."""
    folded = False  # True: ds[layer] already holds dSSR/dz (the slope was folded in above)
    for layer in range(len(blocks) - 1, -1, -1):
        block, d, code = blocks[layer][m], ds[layer], codes[layer]
        n_in, n = block.shape[0] - 1, block.shape[1]
        if code != IDENTITY and not folded:
            _times_slope(d.reshape(d.size), slopes[layer].reshape(d.size))
        inputs = x if layer == 0 else acts[layer - 1]
        gemm(NO_TRANS, TRANS, inputs, d, grads[layer][m], d.shape[1])
        folded = False
        if layer == 0:
            break
        below, below_code = ds[layer - 1], codes[layer - 1]
        if n == 1 and below_code != IDENTITY:  # an outer product, times the slope below, in one pass
            _outer_times_slope(block[:n_in], d, slopes[layer - 1], below)
            folded = True
        else:
            gemm(NO_TRANS, NO_TRANS, block[:n_in], d, below, n)


@njit(**FLAGS)
def chunk_step(blocks: Any, grads: Any, want_grad: bool, x: Any, y: Any, work: Any, codes: Any, out: Any) -> None:
    """SSR of each member of the chunk into ``out`` and, with ``want_grad``, its gradient into the
    ``grads`` blocks (same shapes as ``blocks``): member by member, in this one call."""
    z, acts, slopes, ds = work
    last = len(blocks) - 1
    for m in range(out.size):
        _forward(blocks, m, x, z, acts, slopes, codes)
        out[m] = _residual(acts[last], y, ds[last])
        if want_grad:
            _backward(blocks, grads, m, x, acts, slopes, ds, codes)


class FusedWideNetwork(WideNetwork):
    """``WideNetwork`` whose step (any chunk of members and points) is one compiled call."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.codes = np.array([CODES[name] for name in self.activations], dtype=np.int64)
        self._work: dict[tuple[int, int], tuple] = {}

    def work(self, points: int, slot: int) -> tuple:
        """One member's buffers for ``points`` points (made once per size and thread slot):
        z scratch, and per layer its activation with a row of ones (none for the last), slope
        and d, all C-contiguous (n, points)."""
        key = (points, slot)
        if key not in self._work:
            widths, dtype = self.arch.layers[1:], self.layout.dtype
            acts = []
            for i, n in enumerate(widths):
                a = np.empty((n + (i < len(widths) - 1), points), dtype)
                a[n:] = 1
                acts.append(a)
            z = np.empty(max(widths) * points, dtype)
            slopes = tuple(np.empty((n, points), dtype) for n in widths)
            ds = tuple(np.empty((n, points), dtype) for n in widths)
            self._work[key] = (z, tuple(acts), slopes, ds)
        return self._work[key]

    def step(self, views: list[WideLayer], x: Any, y: Any, grads: list[WideLayer] | None, out: Any, slot: int = 0) -> Any:
        x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)  # point chunks are strided views
        out = np.empty(self.members_of(views), dtype=self.layout.dtype) if out is None else out
        blocks = tuple(layer.block for layer in views)
        targets = blocks if grads is None else tuple(layer.block for layer in grads)
        chunk_step(blocks, targets, grads is not None, x, y, self.work(x.shape[1], slot), self.codes, out)
        return out
