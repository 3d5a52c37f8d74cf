"""The model-first network, for wide layers: batched matrix products, run chunk by chunk.

Activations are (M, n, P), points innermost; a layer's parameters a ``WideLayer`` (block
[W | b]^T (M, i + 1, o)); every layer input carries an extra row of ones, (M, i + 1, P), or
for the first layer the shared data (i + 1, P). Then per layer:
    forward   z = [W | b] [a; 1]                 one batched matmul
    backward  [dW | db]^T = [a; 1] dz^T          one batched matmul, into the gradient buffer
              da = W^T dz                        one batched matmul (skipped for the first layer)
The pass runs on chunks of members (or of one member's points) sized to stay in cache
(``chunks.plan_chunks``); the gradients of point chunks are summed.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from services.engine import parallel
from services.engine.chunks import blas_thread_limit, plan_chunks
from services.engine.cuda_gemm import matmul_into
from services.engine.layouts import WideLayer
from services.engine.network import LayerBuffers, Network


def member_slice(layers: list[WideLayer], m0: int, m1: int) -> list[WideLayer]:
    """Members [m0, m1) of per-layer views."""
    return [WideLayer(layer.block[m0:m1], layer.weight_t[m0:m1]) for layer in layers]


class WideNetwork(Network):
    """Forward and backward of wide layers, member axis first."""

    SSR_EINSUM, SSR_AXES = "mop,mop->m", (1, 2)  # a residual is (M, o, P)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._plans: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}
        self._partials: dict[int, list[tuple[list[WideLayer], Any]]] = {}
        self.threads = parallel.cores() if self.xp.__name__ == "numpy" else 1

    def data(self, x: Any, y: Any) -> tuple[Any, Any]:
        """x (P, n_in), y (P, n_out) -> x with a row of ones (n_in + 1, P), and y (n_out, P)."""
        x, y = self.check_data(x, y)
        ones = self.xp.ones((1, x.shape[0]), dtype=x.dtype)
        return self.xp.ascontiguousarray(self.xp.concatenate([x.T, ones], axis=0)), self.xp.ascontiguousarray(y.T)

    @staticmethod
    def points_of(x: Any) -> int:
        return x.shape[-1]

    @staticmethod
    def members_of(views: list[WideLayer]) -> int:
        return views[0].block.shape[0]

    def make_workspace(self, points: int, members: int) -> list[LayerBuffers]:
        xp, dtype, shared, out = self.xp, self.layout.dtype, {}, []
        for i, n in enumerate(self.arch.layers[1:]):
            shape = (members, n, points)
            if n not in shared:  # scratch, aux, zeros
                shared[n] = (xp.empty(shape, dtype), xp.empty(shape, dtype), xp.zeros(shape, dtype))
            z = xp.empty(shape, dtype)
            if i == self.arch.n_layers - 1:
                a = next_input = z if self.activations[i] == "identity" else xp.empty(shape, dtype)
            else:
                next_input = xp.empty((members, n + 1, points), dtype)
                next_input[:, n, :] = 1
                a = next_input[:, :n, :]
            scratch, aux, zeros = shared[n]
            out.append(LayerBuffers(z=z, a=a, d=xp.empty(shape, dtype), next_input=next_input,
                                    slope=xp.empty(shape, dtype), scratch=scratch, aux=aux, zeros=zeros))
        return out

    def affine(self, layer: WideLayer, a: Any, buf: LayerBuffers) -> Any:
        """buf.z (M, o, P) = [W | b] [a; 1] for a (M, i + 1, P) or the shared input (i + 1, P)."""
        return matmul_into(self.xp, self.xp.swapaxes(layer.block, 1, 2), a, buf.z)

    def first_layer(self, layer: WideLayer, x: Any, buf: LayerBuffers, name: str) -> bool:
        """One input feature (x (2, P): the data row and the ones): the kernels' fused
        ``affine_forward`` (numba's, CuPy's) when they have it for this activation."""
        fused = getattr(self.kernels, "affine_forward", None)
        return fused is not None and x.shape[0] == 2 and fused(name, layer.block, x[0], buf)

    def affine_backward(self, layer: WideLayer, dz: Any, a: Any, grad: WideLayer, da: Any | None,
                        buf: LayerBuffers, below: LayerBuffers | None = None,
                        below_activation: str | None = None) -> bool:
        """From dz (M, o, P): grad.block [dW | db]^T (M, i + 1, o) = [a; 1] dz^T and, unless
        None, da (M, i, P) = W^T dz, the gradient for the layer below. Given the layer below, a
        one-output layer may fold the slope of its activation into da (the kernels'
        ``outer_backward``): returns True when da holds dSSR/dz below."""
        xp = self.xp
        matmul_into(xp, a, xp.swapaxes(dz, 1, 2), grad.block)  # straight into the (strided) gradient buffer
        if da is None:
            return False
        if layer.weight_t.shape[2] > 1:
            matmul_into(xp, layer.weight_t, dz, da)
            return False
        outer_backward = getattr(self.kernels, "outer_backward", None)  # numba's and CuPy's kernels
        if below is not None and outer_backward is not None and \
                outer_backward(below_activation, layer.weight_t, dz, below):
            return True
        xp.multiply(layer.weight_t, dz, out=da)  # one output: an outer product
        return False

    def blas_thread_limit(self, points: int) -> int | None:
        """See ``chunks.blas_thread_limit``."""
        return blas_thread_limit(self.arch, self.layout, points)

    def chunks(self, points: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Member ranges and point ranges of the chunked passes for ``points`` points."""
        if points not in self._plans:
            self._plans[points] = plan_chunks(self.arch, self.layout, points)
        return self._plans[points]

    def partials(self, members: int, count: int, slot: int | None = None) -> list[tuple[list[WideLayer], Any]]:
        """Gradient views and SSR of ``members`` members for ``count`` point chunks after the
        first: one set per chunk (``slot`` None), or one set for the thread of ``slot``."""
        key = (members, slot)
        if len(self._partials.get(key, [])) < count:
            flats = [self.layout.empty(members) for _ in range(count)]
            self._partials[key] = [(self.layout.views(f), self.xp.empty(members, dtype=self.layout.dtype))
                                   for f in flats]
        return self._partials[key][:count]

    def loss_and_grad(self, views: list[WideLayer], x: Any, y: Any, grads: list[WideLayer] | None,
                      out: Any = None) -> Any:
        """(M,) SSR (into ``out`` if given) and, unless ``grads`` is None, the gradients,
        chunk by chunk (see ``plan_chunks``), the chunks spread over the CPU's cores."""
        member_ranges, point_ranges = self.chunks(x.shape[1])
        if len(member_ranges) == 1 and len(point_ranges) == 1:
            return self.step(views, x, y, grads, out)
        out = self.xp.empty(self.layout.members, dtype=self.layout.dtype) if out is None else out
        if len(point_ranges) == 1 or len(member_ranges) >= self.threads:  # member chunks in parallel
            tasks = [partial(self._members, views, x, y, grads, out, m0, m1, point_ranges) for m0, m1 in member_ranges]
            parallel.run(tasks, self.threads)
        else:  # more threads than member chunks: every (member chunk, point chunk) in parallel
            self._pairs(views, x, y, grads, out, member_ranges, point_ranges)
        return out

    def _members(self, views: list[WideLayer], x: Any, y: Any, grads: list[WideLayer] | None, out: Any,
                 m0: int, m1: int, point_ranges: list[tuple[int, int]], slot: int) -> None:
        """Members [m0, m1) on all points, chunk by chunk, in the buffers of ``slot``."""
        views, out = member_slice(views, m0, m1), out[m0:m1]
        grads = None if grads is None else member_slice(grads, m0, m1)
        if len(point_ranges) == 1:
            self.step(views, x, y, grads, out, slot)
            return
        partials = self.partials(m1 - m0, len(point_ranges) - 1, slot)
        targets = _targets(grads, out, partials)
        for (p0, p1), (into, ssr) in zip(point_ranges, targets):
            self.step(views, x[:, p0:p1], y[:, p0:p1], into, ssr, slot)
        _add_partials(grads, out, partials)

    def _pairs(self, views: list[WideLayer], x: Any, y: Any, grads: list[WideLayer] | None, out: Any,
               member_ranges: list[tuple[int, int]], point_ranges: list[tuple[int, int]]) -> None:
        """Each member chunk's point chunks as tasks of their own, all in one parallel run: the
        first point chunk's sums into ``grads`` and ``out``, the others' into partial buffers
        of the whole pack, then added in chunk order (the same sums on any thread). Why: with
        more cores than member chunks (W4 on 16 cores: 8 member chunks of 4 point chunks), a
        run per member chunk kept at most 4 threads busy and waited for them 8 times a pass."""
        partials = self.partials(out.shape[0], len(point_ranges) - 1)
        targets = _targets(grads, out, partials)

        def chunk(m0: int, m1: int, k: int, slot: int) -> None:
            (p0, p1), (into, ssr) = point_ranges[k], targets[k]
            into = None if into is None else member_slice(into, m0, m1)
            self.step(member_slice(views, m0, m1), x[:, p0:p1], y[:, p0:p1], into, ssr[m0:m1], slot)

        tasks = [partial(chunk, m0, m1, k) for m0, m1 in member_ranges for k in range(len(point_ranges))]
        parallel.run(tasks, self.threads)
        _add_partials(grads, out, partials)

    def predict(self, views: list[WideLayer], x: Any) -> Any:
        """Canonical predictions (M, P, n_out) for layout data x (a new array), chunk by chunk."""
        points = x.shape[1]
        out = self.xp.empty((self.layout.members, points, self.arch.layers[-1]), dtype=self.layout.dtype)
        member_ranges, point_ranges = self.chunks(points)
        for m0, m1 in member_ranges:
            for p0, p1 in point_ranges:
                last = self.forward(member_slice(views, m0, m1), x[:, p0:p1])[-1].a
                out[m0:m1, p0:p1] = last.transpose(0, 2, 1)
        return out


def _targets(grads: list[WideLayer] | None, out: Any,
             partials: list[tuple[list[WideLayer], Any]]) -> list[tuple[list[WideLayer] | None, Any]]:
    """Where each point chunk's gradients and SSR go: the first chunk's into ``grads`` and
    ``out``, the others' into the partial buffers (no gradients when ``grads`` is None)."""
    return [(grads, out)] + [(None if grads is None else g, s) for g, s in partials]


def _add_partials(grads: list[WideLayer] | None, out: Any, partials: list[tuple[list[WideLayer], Any]]) -> None:
    """The point chunks' SSR and gradients after the first, added in chunk order: the sums of a
    member do not depend on which thread ran which chunk."""
    for extra_grads, extra_ssr in partials:
        out += extra_ssr
        for total, extra in zip(grads or [], extra_grads or []):
            total.block[...] += extra.block
