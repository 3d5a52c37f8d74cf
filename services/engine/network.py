"""Forward pass, SSR and hand-written backward pass of a pack, in its internal layout.

``reference.py`` is the same computation in plain NumPy; this is its fast form. ``Network``
holds what both layouts share: the order of a step (forward, residual, backward layer by layer)
and the buffers. ``model_last.TinyNetwork`` and ``model_first.WideNetwork`` supply the affine
layers (``affine`` forward, ``affine_backward``) and the data layout.

Buffers are preallocated once per (points, members) size (``Workspace``) and every op writes
with ``out=``, so a training step allocates nothing; each transcendental is computed once per
step (in the forward pass, kept for the backward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.engine.architecture import Architecture
from services.engine.layouts import Layout


@dataclass
class LayerBuffers:
    """One layer's arrays, all shaped like its output (model last (n, P, M), first (M, n, P)).

    z: pre-activation; a: activation (model first: a view into ``next_input``); d: dSSR/da,
    then dSSR/dz in place; next_input: what the next layer multiplies (a, or model first a with
    a row of ones under it); slope: act'(z) when the kernels keep it (numba); scratch, aux and
    zeros (read only): temporaries of the activation kernels, shared by layers of equal width;
    temp_out / temp_in: temporaries of the model-last affine layer (output / input shaped)."""

    z: Any
    a: Any
    d: Any
    next_input: Any
    slope: Any
    scratch: Any
    aux: Any
    zeros: Any
    temp_out: Any = None
    temp_in: Any = None


class Network:
    """The computations of one pack: architecture, layout and activation kernels."""

    def __init__(self, xp: Any, arch: Architecture, layout: Layout, kernels: Any) -> None:
        self.xp, self.arch, self.layout, self.kernels = xp, arch, layout, kernels
        self.activations = [arch.layer_activation(i) for i in range(arch.n_layers)]
        self._workspaces: dict[tuple[int, int, int], list[LayerBuffers]] = {}

    def workspace(self, points: int, members: int, slot: int = 0) -> list[LayerBuffers]:
        """Every layer's buffers for ``points`` points and ``members`` members (made once);
        each thread of a parallel pass uses its own ``slot``."""
        key = (points, members, slot)
        if key not in self._workspaces:
            self._workspaces[key] = self.make_workspace(points, members)
        return self._workspaces[key]

    def check_data(self, x: Any, y: Any) -> tuple[Any, Any]:
        """x (P, n_in), y (P, n_out) as xp arrays of the compute dtype, shapes checked."""
        xp, dtype = self.xp, self.layout.dtype
        x, y = xp.asarray(x, dtype=dtype), xp.asarray(y, dtype=dtype)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must be (P, n) with equal P, got {x.shape} and {y.shape}")
        if (x.shape[1], y.shape[1]) != (self.arch.layers[0], self.arch.layers[-1]):
            raise ValueError(f"x/y widths {x.shape[1]}/{y.shape[1]} do not match {self.arch.layers}")
        return x, y

    def forward(self, views: list[Any], x: Any, slot: int = 0) -> list[LayerBuffers]:
        """All layers on layout data x; every layer's outputs stay in the returned buffers."""
        buffers = self.workspace(self.points_of(x), self.members_of(views), slot)
        inputs = x
        for i, (layer, buf, name) in enumerate(zip(views, buffers, self.activations)):
            if not (i == 0 and self.first_layer(layer, inputs, buf, name)):
                self.affine(layer, inputs, buf)
                self.kernels.forward(name, buf)
            inputs = buf.next_input
        return buffers

    def first_layer(self, layer: Any, x: Any, buf: LayerBuffers, name: str) -> bool:
        """Affine and activation of the first layer in one go where a layout and its kernels
        can (True: buf.a and buf.slope are set, buf.z is not); here never."""
        return False

    def plain_updates(self, *_args: Any) -> int:
        """Updates taken in one compiled call (``loop.Trainer._plain_updates``); none here."""
        return 0

    def loss(self, views: list[Any], x: Any, y: Any, out: Any = None) -> Any:
        """(M,) SSR of layout data (x, y), forward pass only."""
        return self.loss_and_grad(views, x, y, None, out)

    def step(self, views: list[Any], x: Any, y: Any, grads: list[Any] | None, out: Any, slot: int = 0) -> Any:
        """SSR into ``out`` (M,) and, unless ``grads`` is None, dSSR/dparameters into the
        layer views ``grads``, for the members ``views`` hold and the points x holds."""
        buffers = self.forward(views, x, slot)
        last = buffers[-1]
        residual = self.xp.subtract(last.a, y, out=last.d)  # prediction - y
        ssr = self.sum_of_squares(residual, out)
        if grads is None:
            return ssr
        last.d *= 2  # dSSR/dprediction = 2 (prediction - y)
        done = False  # True: the layer above left dSSR/dz (not dSSR/da) in this layer's d
        for i in range(len(views) - 1, -1, -1):
            dz = buffers[i].d if done else self.kernels.backward(self.activations[i], buffers[i])
            below = buffers[i - 1] if i > 0 else None
            inputs = below.next_input if below else x
            done = self.affine_backward(views[i], dz, inputs, grads[i], below.d if below else None, buffers[i],
                                        below=(self.activations[i - 1], below) if below else None)
        return ssr
