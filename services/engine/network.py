"""Forward pass, SSR and hand-written backward pass of a pack, in its internal layout.

Buffers are preallocated once per (points, members) chunk size (``Workspace``) and every op
writes with ``out=``, so a training step allocates almost nothing; each transcendental is
computed once per step; model-first passes run chunk by chunk (see chunks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.engine import linear
from services.engine.architecture import Architecture
from services.engine.chunks import plan_chunks, rows
from services.engine.layouts import Layout


@dataclass
class LayerBuffers:
    """One layer's arrays: pre-activation z, output a, gradient d, the next layer's input
    (a itself, or model first the array a is a view of, with its extra row of ones) and
    temporaries shared by layers of equal width (aux, scratch, a read-only array of zeros)."""

    z: Any
    a: Any
    d: Any
    next_input: Any
    aux: Any
    scratch: Any
    zeros: Any
    grad_t: Any = None  # model first: the transposed weight gradient (m, i + 1, o)


class Workspace:
    """All layers' buffers for one number of points P and m members."""

    def __init__(self, xp: Any, arch: Architecture, layout: Layout, points: int, m: int) -> None:
        dtype, shared = layout.dtype, {}
        self.layers: list[LayerBuffers] = []
        for i, n in enumerate(arch.layers[1:]):
            shape = (n, points, m) if layout.model_last else (m, n, points)
            if n not in shared:
                shared[n] = (xp.empty(shape, dtype), xp.empty(shape, dtype), xp.zeros(shape, dtype))
            z = xp.empty(shape, dtype)
            identity = arch.layer_activation(i) == "identity"
            if layout.model_last or i == arch.n_layers - 1:
                a = z if identity else xp.empty(shape, dtype)
                next_input = a
            else:
                next_input = xp.empty((m, n + 1, points), dtype)
                next_input[:, n, :] = 1
                a = next_input[:, :n, :]
            grad_t = None if layout.model_last else xp.empty((m, arch.layers[i] + 1, n), dtype)
            self.layers.append(LayerBuffers(z, a, xp.empty(shape, dtype), next_input, *shared[n], grad_t))


class Network:
    """The computations of one pack (architecture + layout + activation kernels)."""

    def __init__(self, xp: Any, arch: Architecture, layout: Layout, kernels: Any) -> None:
        self.xp, self.arch, self.layout, self.kernels = xp, arch, layout, kernels
        self.forward_op = linear.forward_last if layout.model_last else linear.forward_first
        self.backward_op = linear.backward_last if layout.model_last else linear.backward_first
        self.ssr_spec = "opm,opm->m" if layout.model_last else "mop,mop->m"
        self.names = [arch.layer_activation(i) for i in range(arch.n_layers)]
        self._workspaces: dict[tuple[int, int], Workspace] = {}
        self._chunks: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {}
        self._partials: dict[int, tuple[Any, list[tuple[Any, Any]], Any]] = {}

    def data(self, x: Any, y: Any) -> tuple[Any, Any]:
        """x (P, n_in), y (P, n_out), host or xp -> the layout's shared data arrays.

        Model last: (n, P, 1), broadcasting over the member axis; model first: x with a row of
        ones (n_in + 1, P) and y (n_out, P).
        """
        xp, dtype = self.xp, self.layout.dtype
        x, y = xp.asarray(x, dtype=dtype), xp.asarray(y, dtype=dtype)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must be (P, n) with equal P, got {x.shape} and {y.shape}")
        if (x.shape[1], y.shape[1]) != (self.arch.layers[0], self.arch.layers[-1]):
            raise ValueError(f"x/y widths {x.shape[1]}/{y.shape[1]} do not match {self.arch.layers}")
        if self.layout.model_last:
            return xp.ascontiguousarray(x.T[:, :, None]), xp.ascontiguousarray(y.T[:, :, None])
        ones = xp.ones((1, x.shape[0]), dtype=dtype)
        return xp.ascontiguousarray(xp.concatenate([x.T, ones], axis=0)), xp.ascontiguousarray(y.T)

    def workspace(self, points: int, members: int) -> Workspace:
        """Buffers for ``points`` points and ``members`` members, allocated on first use."""
        if (points, members) not in self._workspaces:
            self._workspaces[points, members] = Workspace(self.xp, self.arch, self.layout, points, members)
        return self._workspaces[points, members]

    def chunks(self, points: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Member ranges and point ranges of the chunked passes for ``points`` points."""
        if points not in self._chunks:
            self._chunks[points] = plan_chunks(self.arch, self.layout, points)
        return self._chunks[points]

    def partials(self, members: int) -> tuple[Any, list[tuple[Any, Any]], Any]:
        """Scratch gradient views and SSR for the second and later point chunks."""
        if members not in self._partials:
            flat = self.layout.empty(members)
            ssr = self.xp.empty(members, dtype=self.layout.dtype)
            self._partials[members] = (flat, self.layout.views(flat), ssr)
        return self._partials[members]

    def forward(self, views: list[tuple[Any, Any]], x: Any) -> Workspace:
        """Run all layers on layout data x; outputs stay in the returned workspace."""
        members = views[0][1].shape[-1] if self.layout.model_last else views[0][0].shape[0]
        ws = self.workspace(x.shape[-2] if self.layout.model_last else x.shape[-1], members)
        inputs = x
        for view, buf, name in zip(views, ws.layers, self.names):
            self.forward_op(self.xp, view, inputs, buf.z)
            self.kernels.forward(name, buf)
            inputs = buf.next_input
        return ws

    def _residual(self, views: list[tuple[Any, Any]], x: Any, y: Any, out: Any) -> tuple[Any, Workspace]:
        """Forward pass; (M,) SSR (into ``out`` if given), prediction - y left in the last d."""
        ws = self.forward(views, x)
        r = self.xp.subtract(ws.layers[-1].a, y, out=ws.layers[-1].d)
        if out is None:
            return self.xp.einsum(self.ssr_spec, r, r), ws
        return linear.einsum_into(self.xp, self.ssr_spec, r, r, out), ws

    def loss(self, views: list[tuple[Any, Any]], x: Any, y: Any, out: Any = None) -> Any:
        """(M,) SSR of layout data (x, y), forward pass only."""
        return self.loss_and_grad(views, x, y, None, out)

    def loss_and_grad(self, views: list[tuple[Any, Any]], x: Any, y: Any, grads: list[tuple[Any, Any]] | None,
                      out: Any = None) -> Any:
        """(M,) SSR (into ``out`` if given), and dSSR/dparameters written into the views ``grads``
        (None: SSR only), chunk by chunk (see ``plan_chunks``)."""
        member_ranges, point_ranges = self.chunks(x.shape[1])
        if len(member_ranges) == 1 and len(point_ranges) == 1:
            return self._chunk(views, x, y, grads, out)
        out = self.xp.empty(self.layout.members, dtype=self.layout.dtype) if out is None else out
        for m0, m1 in member_ranges:
            part = None if grads is None else rows(grads, m0, m1)
            self._points(rows(views, m0, m1), x, y, part, out[m0:m1], point_ranges)
        return out

    def _points(self, views: list[tuple[Any, Any]], x: Any, y: Any, grads: list[tuple[Any, Any]] | None,
                out: Any, point_ranges: list[tuple[int, int]]) -> None:
        """One member chunk over the point chunks: SSR and gradients summed chunk by chunk."""
        _, more_grads, more_ssr = self.partials(out.shape[0])
        for k, (p0, p1) in enumerate(point_ranges):
            xk, yk = x[:, p0:p1], y[:, p0:p1]
            if k == 0:
                self._chunk(views, xk, yk, grads, out)
                continue
            self._chunk(views, xk, yk, None if grads is None else more_grads, more_ssr)
            out += more_ssr
            for (total, _), (extra, _) in zip(grads or [], more_grads):
                total += extra

    def _chunk(self, views: list[tuple[Any, Any]], x: Any, y: Any, grads: list[tuple[Any, Any]] | None,
               out: Any) -> Any:
        """SSR and gradients of the members that ``views`` hold."""
        ssr, ws = self._residual(views, x, y, out)
        if grads is None:
            return ssr
        ws.layers[-1].d *= 2  # dSSR/dprediction = 2 (prediction - y)
        for i in range(len(views) - 1, -1, -1):
            buf = ws.layers[i]
            dz = self.kernels.backward(self.names[i], buf)
            below = ws.layers[i - 1] if i > 0 else None
            inputs = below.next_input if below else x
            self.backward_op(self.xp, views[i], dz, inputs, grads[i], below.d if below else None, buf.grad_t)
        return ssr

    def predict(self, views: list[tuple[Any, Any]], x: Any) -> Any:
        """Canonical predictions (M, P, n_out) for layout data x (a new array), chunk by chunk."""
        if self.layout.model_last:
            return self.forward(views, x).layers[-1].a.transpose(2, 1, 0).copy()
        points = x.shape[1]
        out = self.xp.empty((self.layout.members, points, self.arch.layers[-1]), dtype=self.layout.dtype)
        member_ranges, point_ranges = self.chunks(points)
        for m0, m1 in member_ranges:
            for p0, p1 in point_ranges:
                last = self.forward(rows(views, m0, m1), x[:, p0:p1]).layers[-1].a
                out[m0:m1, p0:p1] = last.transpose(0, 2, 1)
        return out
