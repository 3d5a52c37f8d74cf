"""The model-last network with numba (optional extra ``fast``): one compiled loop per layer.

For tiny layers the NumPy path spends its time in the ~40 small array calls of a step, not in
arithmetic (W2: 1000 members x 3 points). Here each layer's forward (affine map, activation
and its derivative), the residual with the SSR, and each layer's backward are one compiled
call each, every innermost loop running over the M members (contiguous, vectorized). Sums run
in a fixed order per member, so a member's numbers do not depend on the pack around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from services.engine.layouts import TinyLayer
from services.engine.model_last import TinyNetwork
from services.engine.network import LayerBuffers
from services.engine.numba_kernels import _relu, _sigmoid, _softplus, _tanh

FLAGS = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
CODES = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "softplus": 4}


@njit(**FLAGS)
def _activate(code: int, z: Any, a: Any, slope: Any) -> None:
    """a = act(z), slope = act'(z) for flat arrays (identity: a = z, slope unused)."""
    if code == 0:
        a[:] = z
    elif code == 1:
        _relu(z, a, slope)
    elif code == 2:
        _tanh(z, a, slope)
    elif code == 3:
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
            target = y[o, p, 0]
            for m in range(prediction.shape[2]):
                r = prediction[o, p, m] - target
                ssr[m] += r * r
                d[o, p, m] = 2.0 * r


@njit(**FLAGS)
def layer_backward(w: Any, d: Any, slope: Any, a_in: Any, gw: Any, gb: Any, da: Any, code: int,
                   want_da: bool) -> None:
    """From d = dSSR/da (o, P, M): dz = d * slope in place, gb (o, M) = sum over points of dz,
    gw (o, i, M) = sum over points of dz a_in, and (want_da) da (i, P, M) = W^T dz."""
    n_out, n_in, members = w.shape
    points, shared = d.shape[1], a_in.shape[2] == 1
    if code != 0:
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


# No "contract" here: the update p - lr * g must round like NumPy's multiply then subtract (the
# one-update-at-a-time loop), not as one fused multiply-add.
@njit(cache=True, nogil=True, error_model="numpy")
def plain_updates(params: Any, spare: Any, grad: Any, grad_next: Any, lr: Any, target: Any,
                  weights: Any, biases: Any, grad_weights: Any, grad_biases: Any, x: Any, y: Any,
                  z: Any, a: Any, slope: Any, d: Any, temp: Any, codes: Any, hist: Any,
                  start: int, count: int) -> int:
    """Up to ``count`` updates of the loop (``loop.Trainer``) without going back to Python: per
    update, spare = params - lr * grad, the SSR at spare into hist[start + k] and its gradient
    into grad_next (the kernel calls of ``FusedTinyNetwork.step``); then, unless a stop test
    would fire (a number not finite, a member at its target SSR), spare and grad_next become
    params and grad. Returns the updates taken: the one that would stop is left to the loop,
    which computes it again, exactly. Per-layer arguments are tuples: views of spare and
    grad_next, and the workspace's buffers."""
    flat_p, flat_s, flat_lr = params.reshape(-1), spare.reshape(-1), lr.reshape(-1)
    flat_g, flat_next = grad.reshape(-1), grad_next.reshape(-1)
    last = len(weights) - 1
    for k in range(count):
        for j in range(flat_p.size):
            flat_s[j] = flat_p[j] - flat_lr[j] * flat_g[j]
        layer_forward(weights[0], biases[0], x, z[0], a[0], slope[0], codes[0])
        for i in range(1, last + 1):
            layer_forward(weights[i], biases[i], a[i - 1], z[i], a[i], slope[i], codes[i])
        out = hist[start + k]
        residual(a[last], y, d[last], out)
        for i in range(last, 0, -1):
            layer_backward(weights[i], d[i], slope[i], a[i - 1], grad_weights[i], grad_biases[i], d[i - 1],
                           codes[i], True)
        layer_backward(weights[0], d[0], slope[0], x, grad_weights[0], grad_biases[0], temp, codes[0], False)
        for m in range(out.size):
            if not (np.isfinite(out[m]) and out[m] > target[m]):
                return k
        for j in range(flat_s.size):
            if not np.isfinite(flat_s[j]):
                return k
        flat_p[:] = flat_s
        flat_g[:] = flat_next
    return count


class FusedTinyNetwork(TinyNetwork):
    """``TinyNetwork`` whose step runs as compiled loops, one call per layer and direction."""

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
        buffers = self.forward(views, x, slot)
        out = np.empty(self.members_of(views), dtype=self.layout.dtype) if out is None else out
        residual(buffers[-1].a, y, buffers[-1].d, out)
        if grads is None:
            return out
        for i in range(len(views) - 1, -1, -1):
            below = buffers[i - 1] if i > 0 else None
            inputs = below.a if below else x
            da = below.d if below else buffers[i].temp_in  # temp_in: unused placeholder
            layer_backward(views[i].weight, buffers[i].d, buffers[i].slope, inputs, grads[i].weight,
                           grads[i].bias, da, self.codes[i], below is not None)
        return out

    def plain_updates(self, params: Any, spare: Any, spare_views: list[TinyLayer], grad: Any, grad_next: Any,
                      next_views: list[TinyLayer], lr: Any, target: Any, x: Any, y: Any, hist: Any,
                      start: int, count: int) -> int:
        """The kernel ``plain_updates`` on this network's workspace; the updates taken."""
        buffers = self.workspace(self.points_of(x), self.members_of(spare_views))
        return plain_updates(params, spare, grad, grad_next, lr, target,
                             tuple(v.weight for v in spare_views), tuple(v.bias for v in spare_views),
                             tuple(v.weight for v in next_views), tuple(v.bias for v in next_views), x, y,
                             tuple(b.z for b in buffers), tuple(b.a for b in buffers),
                             tuple(b.slope for b in buffers), tuple(b.d for b in buffers), buffers[0].temp_in,
                             tuple(self.codes), hist, start, count)
