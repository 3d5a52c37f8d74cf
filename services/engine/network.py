"""Forward pass, SSR and hand-written backward pass of a pack, in its internal layout.

``reference.py`` is the same computation in plain NumPy; this is its fast form. ``Network``
holds what both layouts share: the order of a step (forward, residual, backward layer by layer)
and the buffers. ``model_last.TinyNetwork`` and ``model_first.WideNetwork`` supply the affine
layers (``affine`` forward, ``affine_backward``) and the data layout.

Buffers are preallocated once per (points, members) size (``Network.workspace``, built by a
layout's ``make_workspace``) and every op writes with ``out=``, so a training step allocates
nothing; each transcendental is computed once per step (in the forward pass, kept for the
backward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from services.engine.architecture import Architecture
from services.engine.backend import einsum_into
from services.engine.cuda_graphs import GraphCache
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


class UpdateBuffers(NamedTuple):
    """The flat (layout-shaped) buffers an update reads and writes (``loop.Trainer``)."""

    params: Any  # current parameters
    spare: Any  # where the update writes the next ones
    grad: Any  # dSSR/dparameters at params
    grad_next: Any  # dSSR/dparameters at spare (a compiled loop's next gradient)
    velocity: Any  # momentum at params (None without momentum)
    spare_velocity: Any  # momentum at spare (None without momentum)


class Rates(NamedTuple):
    """Per-parameter rates, in the flat layout; 0 where a member or tensor does not move."""

    lr: Any  # learning rate
    mu: Any  # momentum coefficient (None without momentum)


class Limits(NamedTuple):
    """Per-member (M,) stop thresholds that an update tests."""

    threshold: Any  # min_step_size: stop when every |lr * grad| of a member is below it
    target: Any  # target SSR: stop when a member's SSR reaches it


class Network:
    """The computations of one pack: architecture, layout and activation kernels.

    A layout's subclass supplies the hooks below that raise NotImplementedError: how data and
    buffers are shaped (``data``, ``points_of``, ``members_of``, ``make_workspace``), the affine
    layers (``affine``, ``affine_backward``), the SSR's axes (``SSR_EINSUM``, ``SSR_AXES``), and how a whole
    pass is run (``loss_and_grad``, ``predict``)."""

    SSR_EINSUM = ""  # the SSR's sum over a residual's output and point axes, e.g. "mop,mop->m"
    SSR_AXES: tuple[int, ...] = ()  # those axes

    def __init__(self, xp: Any, arch: Architecture, layout: Layout, kernels: Any) -> None:
        self.xp, self.arch, self.layout, self.kernels = xp, arch, layout, kernels
        self.activations = [arch.layer_activation(i) for i in range(arch.n_layers)]
        self._workspaces: dict[tuple[int, int, int], list[LayerBuffers]] = {}
        self.graphs = GraphCache()  # CUDA graphs of blocks of updates, which use the workspace

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

    def data(self, x: Any, y: Any) -> tuple[Any, Any]:
        """x (P, n_in), y (P, n_out) -> the layout's data arrays (made once per ``train``)."""
        raise NotImplementedError

    @staticmethod
    def points_of(x: Any) -> int:
        """Points in layout data x."""
        raise NotImplementedError

    @staticmethod
    def members_of(views: list[Any]) -> int:
        """Members that per-layer views hold."""
        raise NotImplementedError

    def make_workspace(self, points: int, members: int) -> list[LayerBuffers]:
        """Every layer's buffers, shaped for this layout (``workspace`` keeps them)."""
        raise NotImplementedError

    def affine(self, layer: Any, a: Any, buf: LayerBuffers) -> Any:
        """buf.z = W a + b for the layer's parameter views."""
        raise NotImplementedError

    def affine_backward(self, layer: Any, dz: Any, a: Any, grad: Any, da: Any | None, buf: LayerBuffers,
                        below: LayerBuffers | None = None, below_activation: str | None = None) -> bool:
        """From dz: the layer's gradient into ``grad`` and, unless None, da = W^T dz for the
        layer below (its ``below`` buffers, whose activation is ``below_activation``). True when
        the slope of that activation was folded in (da then holds dSSR/dz below)."""
        raise NotImplementedError

    def sum_of_squares(self, residual: Any, out: Any, quarter: bool = False) -> Any:
        """(M,) sum over outputs and points of residual^2 (into ``out`` if given), over the
        layout's ``SSR_AXES`` (``SSR_EINSUM``); with ``quarter`` (only where the kernels have
        ``doubled_residual``: CuPy's, whose one-kernel sum is used) times 1/4, for a residual
        that holds 2 (prediction - y)."""
        fused = getattr(self.kernels, "sum_of_squares", None)  # CuPy's kernels only
        if fused is not None:
            return fused(residual, self.SSR_AXES, out, quarter)
        if out is None:
            return self.xp.einsum(self.SSR_EINSUM, residual, residual)
        return einsum_into(self.xp, self.SSR_EINSUM, residual, residual, out)

    def loss_and_grad(self, views: list[Any], x: Any, y: Any, grads: list[Any] | None, out: Any = None) -> Any:
        """(M,) SSR and, unless ``grads`` is None, the gradients: ``step`` over the layout's
        whole pass (model first: chunk by chunk)."""
        raise NotImplementedError

    def predict(self, views: list[Any], x: Any) -> Any:
        """Canonical predictions (M, P, n_out) for layout data x (a new array)."""
        raise NotImplementedError

    def blas_thread_limit(self, points: int) -> int | None:
        """The BLAS thread limit for a ``train`` call on ``points`` points; None: leave BLAS
        alone (here: no matrix products)."""
        return None

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
        doubled = getattr(self.kernels, "doubled_residual", None) if grads is not None else None
        if doubled is not None:  # CuPy: dSSR/dprediction in one kernel, and the SSR from it
            doubled(last.a, y, last.d)
            ssr = self.sum_of_squares(last.d, out, quarter=True)
        else:
            residual = self.xp.subtract(last.a, y, out=last.d)  # prediction - y
            ssr = self.sum_of_squares(residual, out)
            if grads is None:
                return ssr
            last.d *= 2  # dSSR/dprediction = 2 (prediction - y)
        folded = False  # True: the layer above left dSSR/dz (not dSSR/da) in this layer's d
        for i in range(len(views) - 1, -1, -1):
            dz = buffers[i].d if folded else self.kernels.backward(self.activations[i], buffers[i])
            if i == 0:
                self.affine_backward(views[0], dz, x, grads[0], None, buffers[0])
                break
            below = buffers[i - 1]
            folded = self.affine_backward(views[i], dz, below.next_input, grads[i], below.d, buffers[i],
                                          below=below, below_activation=self.activations[i - 1])
        return ssr
