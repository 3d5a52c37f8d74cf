"""The model-first network with numba (optional extra ``fast``): a chunk's whole step in one call.

Why: ``WideNetwork.step`` makes about fifteen NumPy and numba calls per chunk of members, and
when the chunks run on parallel threads each call hands Python's GIL from one thread to the
other: two threads then gained much less than two processes would (benchmarks/RESULTS.md,
"Twelfth session"), and the calls' own Python work was a noticeable part of a step. Here one
compiled call, which never takes the GIL, runs a chunk of members through forward, SSR and
backward, member by member (a member's activations stay in cache), with the same numba
activation kernels and, for the matrix products, NumPy's own OpenBLAS (``numba_blas``), so BLAS
thread limits and CPU kernels are NumPy's. ``predict`` runs the same forward pass: predictions
have the bits the SSR was computed from.

Per member and layer (inputs carry a row of ones, blocks are [W | b]^T (i + 1, o)):
    forward   z = block^T [a; 1]          gemm, then a, slope = act(z), act'(z)
    backward  dz = d * slope               (folded into the layer above's product where o = 1)
              grad block = [a; 1] dz^T      gemm, straight into the gradient buffer
              d below = W^T dz              gemm (o = 1: an outer product, with the slope folded in)
A member's numbers do not depend on the pack around it (each member is its own products and
loops), so a pack still rounds exactly like its members alone.

numba's on-disk cache of this module holds the activation kernels and BLAS calls it makes but
is keyed by this file alone: after changing ``numba_layers.py``, ``numba_kernels.py``,
``numba_float32.py`` or ``numba_blas.py``, delete ``services/engine/__pycache__/numba_wide*``
(Docker images never carry the cache).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from services.engine.layouts import WideLayer
from services.engine.model_first import WideNetwork
from services.engine.numba_blas import NO_TRANS, TRANS, gemm
from services.engine.numba_kernels import _outer_times_slope
from services.engine.numba_layers import CODES, FLAGS, IDENTITY, activate, affine_first, times_slope


class Tables(NamedTuple):
    """Where each layer's pieces lie in a member's flat buffers, one entry per layer (int64
    arrays: compiled code reads them at run time, so one compilation serves every network)."""

    dims: np.ndarray  # (layers, 3): inputs, outputs, where the layer's block starts in a parameter row
    codes: np.ndarray  # the layer's activation (numba_layers.CODES)
    act_at: np.ndarray  # first row of the layer's activations in Work.acts
    act_rows: np.ndarray  # their rows: outputs, plus a row of ones under a hidden layer
    slope_at: np.ndarray  # first row of the layer's slopes in Work.slopes, and of its ds in Work.ds
    widths: np.ndarray  # outputs (rows of slopes and ds)


class Work(NamedTuple):
    """One member's flat buffers for a chunk of points, rows of ``points`` values each."""

    z: np.ndarray  # scratch for one layer's pre-activations
    acts: np.ndarray  # every layer's activations (the ones rows stay ones)
    slopes: np.ndarray  # every layer's act'(z)
    ds: np.ndarray  # every layer's dSSR/da, then dSSR/dz


@njit(**FLAGS)
def _views(flat: Any, offsets: Any, rows: Any, layer: int, points: int) -> Any:
    """Layer ``layer``'s (rows, points) view of a flat per-member work buffer (``offsets`` and
    ``rows`` count rows of ``points``)."""
    start = offsets[layer] * points
    return flat[start:start + rows[layer] * points].reshape((rows[layer], points))


@njit(**FLAGS)
def _block(row: Any, dims: Any, layer: int) -> Any:
    """Layer ``layer``'s block [W | b]^T (i + 1, o) in a member's flat parameters."""
    n_in, n, start = dims[layer, 0], dims[layer, 1], dims[layer, 2]
    return row[start:start + (n_in + 1) * n].reshape((n_in + 1, n))


@njit(**FLAGS)
def _acts(work: Work, tables: Tables, layer: int, points: int) -> Any:
    """Layer ``layer``'s activations (with the row of ones under a hidden layer)."""
    return _views(work.acts, tables.act_at, tables.act_rows, layer, points)


@njit(**FLAGS)
def _slopes(work: Work, tables: Tables, layer: int, points: int) -> Any:
    """Layer ``layer``'s act'(z)."""
    return _views(work.slopes, tables.slope_at, tables.widths, layer, points)


@njit(**FLAGS)
def _ds(work: Work, tables: Tables, layer: int, points: int) -> Any:
    """Layer ``layer``'s dSSR/da (then, times the slope, dSSR/dz)."""
    return _views(work.ds, tables.slope_at, tables.widths, layer, points)


@njit(**FLAGS)
def _forward(row: Any, tables: Tables, x: Any, work: Work) -> None:
    """One member's forward pass (parameters ``row``): every layer's activation, over its row
    of ones, and its slope, in ``work``."""
    z, points = work.z, x.shape[1]
    inputs = x
    for layer in range(tables.codes.size):
        block, code = _block(row, tables.dims, layer), tables.codes[layer]
        a, slope = _acts(work, tables, layer, points), _slopes(work, tables, layer, points)
        n = block.shape[1]
        if layer == 0 and block.shape[0] == 2 and affine_first(code, block, x, a, slope):
            inputs = a
            continue
        if code == IDENTITY:  # z is a itself
            gemm(TRANS, NO_TRANS, block, inputs, a[:n])
        else:
            size = n * points
            gemm(TRANS, NO_TRANS, block, inputs, z[:size].reshape((n, points)))
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
def _backward(row: Any, grad: Any, tables: Tables, x: Any, work: Work) -> None:
    """One member's backward pass from its last d = dSSR/dprediction: the gradient into ``grad``
    (its flat row, laid out like ``row``)."""
    points = x.shape[1]
    folded = False  # True: this layer's d already holds dSSR/dz (the slope was folded in above)
    for layer in range(tables.codes.size - 1, -1, -1):
        block, code = _block(row, tables.dims, layer), tables.codes[layer]
        d = _ds(work, tables, layer, points)
        n_in, n = block.shape[0] - 1, block.shape[1]
        if code != IDENTITY and not folded:
            times_slope(d.reshape(d.size), _slopes(work, tables, layer, points).reshape(d.size))
        inputs = x if layer == 0 else _acts(work, tables, layer - 1, points)
        gemm(NO_TRANS, TRANS, inputs, d, _block(grad, tables.dims, layer))
        folded = False
        if layer == 0:
            break
        below = _ds(work, tables, layer - 1, points)
        if n == 1 and tables.codes[layer - 1] != IDENTITY:  # an outer product, times the slope below, in one pass
            planes = (1, n_in, points)  # the layer-by-layer kernel's (members, n_in, points), one member
            _outer_times_slope(block[:n_in].T, d, _slopes(work, tables, layer - 1, points).reshape(planes),
                               below.reshape(planes))
            folded = True
        else:
            gemm(NO_TRANS, NO_TRANS, block[:n_in], d, below)


@njit(**FLAGS)
def chunk_step(params: Any, grads: Any, want_grad: bool, tables: Tables, x: Any, y: Any, work: Work,
               out: Any) -> None:
    """SSR of each member (row of ``params``) into ``out`` and, with ``want_grad``, its gradient
    into the same row of ``grads``: member by member, in this one call."""
    last, points = tables.codes.size - 1, x.shape[1]
    for m in range(out.size):
        _forward(params[m], tables, x, work)
        out[m] = _residual(_acts(work, tables, last, points), y, _ds(work, tables, last, points))
        if want_grad:
            _backward(params[m], grads[m], tables, x, work)


@njit(**FLAGS)
def chunk_predict(params: Any, tables: Tables, x: Any, work: Work, out: Any) -> None:
    """Predictions out (members, P, n_out) of the chunk: the forward pass of ``chunk_step``."""
    last = _acts(work, tables, tables.codes.size - 1, x.shape[1])
    for m in range(out.shape[0]):
        _forward(params[m], tables, x, work)
        for o in range(out.shape[2]):
            for p in range(out.shape[1]):
                out[m, p, o] = last[o, p]


class FusedWideNetwork(WideNetwork):
    """``WideNetwork`` whose step (any chunk of members and points) is one compiled call.

    The compiled code takes flat buffers and tables of where each layer's pieces start, so one
    compilation per dtype serves every depth, width and chunk."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        layers, widths = self.arch.layers, self.arch.layers[1:]
        act_rows = [n + (i < len(widths) - 1) for i, n in enumerate(widths)]  # a row of ones under hidden layers
        self.tables = Tables(
            dims=np.array([(i, o, off) for i, o, off in zip(layers, widths, self.layout.offsets)], dtype=np.int64),
            codes=np.array([CODES[name] for name in self.activations], dtype=np.int64),
            act_at=np.cumsum([0] + act_rows[:-1], dtype=np.int64), act_rows=np.array(act_rows, dtype=np.int64),
            slope_at=np.cumsum([0] + list(widths[:-1]), dtype=np.int64), widths=np.array(widths, dtype=np.int64),
        )
        self._work: dict[tuple[int, int], Work] = {}

    def work(self, points: int, slot: int) -> Work:
        """One member's buffers for ``points`` points (made once per size and thread slot): z
        scratch, then flat: every layer's activation (with a row of ones under it, none under
        the last), slope and d, each C-contiguous (rows, points) at ``self.tables``'s offsets."""
        key = (points, slot)
        if key not in self._work:
            rows, widest, dtype = int(self.tables.widths.sum()), int(self.tables.widths.max()), self.layout.dtype
            self._work[key] = Work(z=np.empty(widest * points, dtype),
                                   acts=np.ones(int(self.tables.act_rows.sum()) * points, dtype),
                                   slopes=np.empty(rows * points, dtype), ds=np.empty(rows * points, dtype))
        return self._work[key]

    def step(self, views: list[WideLayer], x: Any, y: Any, grads: list[WideLayer] | None, out: Any,
             slot: int = 0) -> Any:
        """As ``Network.step``, in one compiled call. A point chunk's x and y (strided views of
        the data) are copied first: the compiled code takes contiguous rows only."""
        x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
        out = np.empty(self.members_of(views), dtype=self.layout.dtype) if out is None else out
        params = self.rows_of(views)
        targets = params if grads is None else self.rows_of(grads)
        chunk_step(params, targets, grads is not None, self.tables, x, y, self.work(x.shape[1], slot), out)
        return out

    def predict(self, views: list[WideLayer], x: Any) -> Any:
        """Canonical predictions (M, P, n_out), chunk by chunk, by the forward pass the SSR
        comes from (the same bits)."""
        points = x.shape[1]
        out = np.empty((self.layout.members, points, self.arch.layers[-1]), dtype=self.layout.dtype)
        member_ranges, point_ranges = self.chunks(points)
        params = self.rows_of(views)
        for m0, m1 in member_ranges:
            for p0, p1 in point_ranges:
                chunk = np.ascontiguousarray(x[:, p0:p1])
                chunk_predict(params[m0:m1], self.tables, chunk, self.work(p1 - p0, 0), out[m0:m1, p0:p1])
        return out

    def rows_of(self, views: list[WideLayer]) -> np.ndarray:
        """The flat (members, n_params) rows that per-layer views (of some members) cut up: the
        first layer's block starts each row (``Layout`` puts it at offset 0)."""
        first = views[0].block
        return np.lib.stride_tricks.as_strided(first, shape=(first.shape[0], self.layout.n_params),
                                               strides=(first.strides[0], first.itemsize))
