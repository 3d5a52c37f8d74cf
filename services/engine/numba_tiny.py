"""The model-last network with numba (optional extra ``fast``): one compiled loop per layer.

For tiny layers the NumPy path spends its time in the ~40 small array calls of a step, not in
arithmetic (W2: 1000 members x 3 points). Here each layer's forward (affine map, activation
and its derivative), the residual with the SSR, and each layer's backward are one compiled
loop each, every innermost loop running over the M members (contiguous, vectorized); a step
calls them all from one compiled function, and ``plain_updates`` runs many steps in one call.
Sums run in a fixed order per member, so a member's numbers do not depend on the pack around it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from services.engine.layouts import TinyLayer
from services.engine.model_last import TinyNetwork
from services.engine.network import LayerBuffers, Limits, Rates, UpdateBuffers
from services.engine.numba_kernels import _relu, _sigmoid, _softplus, _tanh
from services.engine.numba_layers import CODES, FLAGS, IDENTITY, RELU, SIGMOID, TANH


class TinyLayers(NamedTuple):
    """Per-layer views (tuples, one entry per layer) that a compiled step reads and writes."""

    weights: tuple  # (o, i, M) each
    biases: tuple  # (o, M) each
    grad_weights: tuple  # where dSSR/dW goes, shaped as weights
    grad_biases: tuple  # where dSSR/db goes, shaped as biases


class TinyWork(NamedTuple):
    """The workspace's per-layer buffers, (o, P, M) each, as tuples for compiled code."""

    z: tuple  # pre-activations
    a: tuple  # activations
    slope: tuple  # act'(z)
    d: tuple  # dSSR/da, then dSSR/dz
    unused_da: Any  # where the first layer's da would go (it is not computed)


@njit(**FLAGS)
def _activate(code: int, z: Any, a: Any, slope: Any) -> None:
    """a = act(z), slope = act'(z) for flat arrays (identity: a = z, slope unused). Unlike
    ``numba_layers.activate`` it always takes the float64 kernels (float32 values are computed
    in float64 and rounded once): the tiny network's float32 numbers were set so, and switching
    would change them."""
    if code == IDENTITY:
        a[:] = z
    elif code == RELU:
        _relu(z, a, slope)
    elif code == TANH:
        _tanh(z, a, slope)
    elif code == SIGMOID:
        _sigmoid(z, a, slope)
    else:
        _softplus(z, a, slope)


@njit(**FLAGS)
def layer_forward(w: Any, b: Any, a_in: Any, z: Any, a: Any, slope: Any, code: int) -> None:
    """z (o, P, M) = b + sum over inputs k of W[:, k] a_in[k]; then a, slope = act(z), act'(z).
    w (o, i, M), b (o, M); a_in (i, P, M), or the shared data (i, P, 1)."""
    n_out, n_in, members = w.shape
    shared = a_in.shape[2] == 1
    for o in range(n_out):
        for p in range(z.shape[1]):
            row = z[o, p]
            row[:] = b[o]
            for k in range(n_in):
                if shared:
                    value = a_in[k, p, 0]
                    for m in range(members):
                        row[m] += w[o, k, m] * value
                else:
                    for m in range(members):
                        row[m] += w[o, k, m] * a_in[k, p, m]
    _activate(code, z.reshape(-1), a.reshape(-1), slope.reshape(-1))


@njit(**FLAGS)
def residual(prediction: Any, y: Any, d: Any, ssr: Any) -> None:
    """d = 2 (prediction - y) = dSSR/dprediction, and ssr (M,) = sum of (prediction - y)^2."""
    ssr[:] = 0.0
    for o in range(prediction.shape[0]):
        for p in range(prediction.shape[1]):
            observed = y[o, p, 0]
            for m in range(prediction.shape[2]):
                r = prediction[o, p, m] - observed
                ssr[m] += r * r
                d[o, p, m] = 2.0 * r


@njit(**FLAGS)
def layer_backward(w: Any, d: Any, slope: Any, a_in: Any, gw: Any, gb: Any, da: Any, code: int,
                   want_da: bool) -> None:
    """From d = dSSR/da (o, P, M): dz = d * slope in place, gb (o, M) = sum over points of dz,
    gw (o, i, M) = sum over points of dz a_in, and (want_da) da (i, P, M) = W^T dz."""
    n_out, n_in, members = w.shape
    points, shared = d.shape[1], a_in.shape[2] == 1
    if code != IDENTITY:
        flat_d, flat_slope = d.reshape(-1), slope.reshape(-1)
        for j in range(flat_d.size):
            flat_d[j] *= flat_slope[j]
    gb[:] = 0.0
    gw[:] = 0.0
    for o in range(n_out):
        for p in range(points):
            for m in range(members):
                gb[o, m] += d[o, p, m]
            for k in range(n_in):
                if shared:
                    value = a_in[k, p, 0]
                    for m in range(members):
                        gw[o, k, m] += d[o, p, m] * value
                else:
                    for m in range(members):
                        gw[o, k, m] += d[o, p, m] * a_in[k, p, m]
    if want_da:
        da[:] = 0.0
        for k in range(n_in):
            for p in range(points):
                for o in range(n_out):
                    for m in range(members):
                        da[k, p, m] += w[o, k, m] * d[o, p, m]


# The functions below are compiled without fastmath's "contract" (the layer kernels they call keep
# their own flags): an update must round like NumPy's separate multiply and subtract in the
# one-update-at-a-time loop, not as a fused multiply-add.
@njit(inline="always", error_model="numpy")
def _step(lr: float, grad: float) -> float:
    """lr * grad, and exactly lr (0, of the buffer's dtype) where lr is 0, as ``Trainer._delta``:
    a frozen tensor's gradient may be infinite, and 0 * inf would be NaN."""
    return lr * grad if lr != 0 else lr


@njit(cache=True, nogil=True, error_model="numpy")
def _update(buffers: UpdateBuffers, rates: Rates, threshold: Any, momentum: bool, check_min: bool) -> bool:
    """``loop.Trainer._update`` on flat (n_params, M) buffers: spare = params - lr * grad, or
    with momentum spare_velocity = mu * velocity - lr * grad, spare = params + spare_velocity.
    False, with nothing decided, when a member's largest step is under its min_step_size."""
    params, spare, grad, velocity, spare_velocity = (buffers.params, buffers.spare, buffers.grad,
                                                     buffers.velocity, buffers.spare_velocity)
    lr, mu = rates.lr, rates.mu
    n_params, members = params.shape
    if check_min:  # NaN-propagating max of |lr * grad| per member, as NumPy's max
        largest = np.zeros(members, dtype=params.dtype)
        for j in range(n_params):
            for m in range(members):
                step = abs(_step(lr[j, m], grad[j, m]))
                if not np.isnan(largest[m]) and (np.isnan(step) or step > largest[m]):
                    largest[m] = step
        for m in range(members):
            if largest[m] < threshold[m]:
                return False
    for j in range(n_params):
        for m in range(members):
            delta = _step(lr[j, m], grad[j, m])
            if momentum:
                moved = mu[j, m] * velocity[j, m]
                moved = moved - delta
                spare_velocity[j, m] = moved
                spare[j, m] = params[j, m] + moved
            else:
                spare[j, m] = params[j, m] - delta
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _ssr_and_gradient(layers: TinyLayers, work: TinyWork, x: Any, y: Any, codes: Any, out: Any) -> None:
    """A training step of the tiny network as one compiled call (``FusedTinyNetwork.step``):
    the SSR at the ``weights``/``biases`` views into ``out``, the gradient into the
    ``grad_weights``/``grad_biases`` views."""
    weights, biases, grad_weights, grad_biases = layers.weights, layers.biases, layers.grad_weights, layers.grad_biases
    z, a, slope, d = work.z, work.a, work.slope, work.d
    last = len(weights) - 1
    layer_forward(weights[0], biases[0], x, z[0], a[0], slope[0], codes[0])
    for i in range(1, last + 1):
        layer_forward(weights[i], biases[i], a[i - 1], z[i], a[i], slope[i], codes[i])
    residual(a[last], y, d[last], out)
    for i in range(last, 0, -1):
        layer_backward(weights[i], d[i], slope[i], a[i - 1], grad_weights[i], grad_biases[i], d[i - 1],
                       codes[i], True)
    layer_backward(weights[0], d[0], slope[0], x, grad_weights[0], grad_biases[0], work.unused_da, codes[0], False)


@njit(cache=True, nogil=True, error_model="numpy")
def plain_updates(buffers: UpdateBuffers, rates: Rates, limits: Limits, layers: TinyLayers, work: TinyWork, x: Any,
                  y: Any, codes: Any, hist: Any, start: int, count: int, momentum: bool, check_min: bool) -> int:
    """Up to ``count`` updates of ``loop.Trainer`` without going back to Python. Per update:
    ``_update`` into spare (and spare_velocity), the SSR at spare into hist[start + k] and its
    gradient into grad_next; then, unless a stop test would fire (min_step_size, a number not
    finite, a member at its target SSR), spare, spare_velocity and grad_next become params,
    velocity and grad. Returns the updates taken: the one that would stop is left to the loop,
    which computes it again, exactly.

    Without momentum, velocity, spare_velocity and mu are unused; ``check_min``: some
    min_step_size threshold is positive; layers: per-layer views of spare and grad_next."""
    params, spare, grad = buffers.params, buffers.spare, buffers.grad
    for k in range(count):
        if not _update(buffers, rates, limits.threshold, momentum, check_min):
            return k
        out = hist[start + k]
        _ssr_and_gradient(layers, work, x, y, codes, out)
        for m in range(out.size):
            if not (np.isfinite(out[m]) and out[m] > limits.target[m]):
                return k
        for value in spare.flat:
            if not np.isfinite(value):
                return k
        params[:] = spare
        grad[:] = buffers.grad_next
        if momentum:
            buffers.velocity[:] = buffers.spare_velocity
    return count


class FusedTinyNetwork(TinyNetwork):
    """``TinyNetwork`` whose step is one compiled call (``_ssr_and_gradient``) of the layer loops."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.codes = [CODES[name] for name in self.activations]

    def forward(self, views: list[TinyLayer], x: Any, slot: int = 0) -> list[LayerBuffers]:
        """All layers on layout data x (n_in, P, 1); outputs stay in the returned buffers."""
        buffers = self.workspace(self.points_of(x), self.members_of(views), slot)
        inputs = x
        for layer, buf, code in zip(views, buffers, self.codes):
            layer_forward(layer.weight, layer.bias, inputs, buf.z, buf.a, buf.slope, code)
            inputs = buf.a
        return buffers

    def step(self, views: list[TinyLayer], x: Any, y: Any, grads: list[TinyLayer] | None, out: Any,
             slot: int = 0) -> Any:
        """SSR into ``out`` (M,) (a new array if None) and, unless ``grads`` is None, the
        gradients into the views ``grads``."""
        out = np.empty(self.members_of(views), dtype=self.layout.dtype) if out is None else out
        if grads is None:
            buffers = self.forward(views, x, slot)
            residual(buffers[-1].a, y, buffers[-1].d, out)
            return out
        workspace = self.workspace(self.points_of(x), self.members_of(views), slot)
        _ssr_and_gradient(_layers(views, grads), _work(workspace), x, y, tuple(self.codes), out)
        return out

    def plain_updates(self, buffers: UpdateBuffers, rates: Rates, limits: Limits, check_min: bool,
                      spare_views: list[TinyLayer], next_views: list[TinyLayer], x: Any, y: Any, hist: Any,
                      start: int, count: int) -> int:
        """The kernel ``plain_updates`` on this network's workspace; the updates taken. Without
        momentum, ``buffers`` and ``rates`` hold None for velocity, spare_velocity and mu."""
        workspace = self.workspace(self.points_of(x), self.members_of(spare_views))
        momentum = buffers.velocity is not None
        if not momentum:  # numba needs arrays of one type here: zero-member stand-ins, never read
            none = buffers.params[:, :0]
            buffers, rates = buffers._replace(velocity=none, spare_velocity=none), rates._replace(mu=none)
        return plain_updates(buffers, rates, limits, _layers(spare_views, next_views), _work(workspace), x, y,
                             tuple(self.codes), hist, start, count, momentum, check_min)


def _layers(views: list[TinyLayer], grads: list[TinyLayer]) -> TinyLayers:
    """``_ssr_and_gradient``'s ``layers``: per-layer weights and biases, and their gradients' views."""
    return TinyLayers(tuple(v.weight for v in views), tuple(v.bias for v in views),
                      tuple(g.weight for g in grads), tuple(g.bias for g in grads))


def _work(workspace: list[LayerBuffers]) -> TinyWork:
    """``_ssr_and_gradient``'s ``work``: per-layer z, a, slope, d, and the first layer's unused da."""
    return TinyWork(tuple(b.z for b in workspace), tuple(b.a for b in workspace), tuple(b.slope for b in workspace),
                    tuple(b.d for b in workspace), workspace[0].temp_in)
