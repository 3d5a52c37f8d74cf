"""The model-last network, for tiny layers: every array ends with the member axis M.

Activations are (n, P, M), a layer's parameters a ``TinyLayer`` (weight (o, i, M), bias
(o, M)), the shared data (n, P, 1). A product over the i inputs (or o outputs) of a layer is
a short Python loop of broadcast multiply-adds, each one contiguous vector op over M, or one
einsum when both are larger than LOOP_MAX. Temporaries are preallocated per layer.
"""

from __future__ import annotations

from typing import Any

from services.engine.backend import einsum_into, sum_into
from services.engine.layouts import TinyLayer
from services.engine.network import LayerBuffers, Network

LOOP_MAX = 4  # at most this many broadcast ops per contraction, else one einsum


class TinyNetwork(Network):
    """Forward and backward of tiny layers, member axis last."""

    SSR_EINSUM, SSR_AXES = "opm,opm->m", (0, 1)  # a residual is (o, P, M)

    def data(self, x: Any, y: Any) -> tuple[Any, Any]:
        """x (P, n_in), y (P, n_out) -> (n_in, P, 1), (n_out, P, 1): broadcast over members."""
        x, y = self.check_data(x, y)
        return self.xp.ascontiguousarray(x.T[:, :, None]), self.xp.ascontiguousarray(y.T[:, :, None])

    @staticmethod
    def points_of(x: Any) -> int:
        return x.shape[1]

    @staticmethod
    def members_of(views: list[TinyLayer]) -> int:
        return views[0].bias.shape[-1]

    def make_workspace(self, points: int, members: int) -> list[LayerBuffers]:
        xp, dtype, shared, out = self.xp, self.layout.dtype, {}, []
        for i, (n_in, n) in enumerate(zip(self.arch.layers, self.arch.layers[1:])):
            shape = (n, points, members)
            if n not in shared:  # scratch, aux, zeros
                shared[n] = (xp.empty(shape, dtype), xp.empty(shape, dtype), xp.zeros(shape, dtype))
            z = xp.empty(shape, dtype)
            a = z if self.activations[i] == "identity" else xp.empty(shape, dtype)
            scratch, aux, zeros = shared[n]
            out.append(LayerBuffers(z=z, a=a, d=xp.empty(shape, dtype), next_input=a, slope=xp.empty(shape, dtype),
                                    scratch=scratch, aux=aux, zeros=zeros, temp_out=xp.empty(shape, dtype),
                                    temp_in=xp.empty((n_in, points, members), dtype)))
        return out

    def affine(self, layer: TinyLayer, a: Any, buf: LayerBuffers) -> Any:
        """buf.z (o, P, M) = W a + b for a (i, P, M) or the shared input (i, P, 1)."""
        xp, (w, b), z = self.xp, layer, buf.z
        n_out, n_in = w.shape[0], w.shape[1]
        if n_in <= min(n_out, LOOP_MAX):  # sum over inputs k of W[:, k] a[k]
            xp.multiply(w[:, 0, None, :], a[0], out=z)
            for k in range(1, n_in):
                z += xp.multiply(w[:, k, None, :], a[k], out=buf.temp_out)
        elif n_out <= LOOP_MAX:  # output j = sum over inputs of W[j] a
            for j in range(n_out):
                sum_into(xp, xp.multiply(w[j][:, None, :], a, out=buf.temp_in), 0, z[j])
        else:
            einsum_into(xp, "oim,ipm->opm", w, a, z)
        z += b[:, None, :]
        return z

    def affine_backward(self, layer: TinyLayer, dz: Any, a: Any, grad: TinyLayer, da: Any | None,
                        buf: LayerBuffers, below: LayerBuffers | None = None,
                        below_activation: str | None = None) -> bool:
        """From dz (o, P, M): grad.weight (o, i, M), grad.bias (o, M) and, unless None, da
        (i, P, M) = W^T dz, the gradient for the layer below. The layer below is not needed
        here: returns False, da is dSSR/da (see ``Network.step``)."""
        xp, w = self.xp, layer.weight
        n_out, n_in = w.shape[0], w.shape[1]
        sum_into(xp, dz, 1, grad.bias)
        if n_in <= min(n_out, LOOP_MAX):
            for k in range(n_in):
                sum_into(xp, xp.multiply(dz, a[k], out=buf.temp_out), 1, grad.weight[:, k, :])
        elif n_out <= LOOP_MAX:
            for j in range(n_out):
                sum_into(xp, xp.multiply(dz[j], a, out=buf.temp_in), 1, grad.weight[j])
        else:
            einsum_into(xp, "opm,ipm->oim", dz, a, grad.weight)
        if da is None:
            return False
        if n_out <= min(n_in, LOOP_MAX):
            xp.multiply(w[0][:, None, :], dz[0], out=da)
            for j in range(1, n_out):
                da += xp.multiply(w[j][:, None, :], dz[j], out=buf.temp_in)
        elif n_in <= LOOP_MAX:
            for k in range(n_in):
                sum_into(xp, xp.multiply(w[:, k, None, :], dz, out=buf.temp_out), 0, da[k])
        else:
            einsum_into(xp, "oim,opm->ipm", w, dz, da)
        return False

    def loss_and_grad(self, views: list[TinyLayer], x: Any, y: Any, grads: list[TinyLayer] | None,
                      out: Any = None) -> Any:
        """(M,) SSR (into ``out`` if given) and, unless ``grads`` is None, the gradients."""
        return self.step(views, x, y, grads, out)

    def predict(self, views: list[TinyLayer], x: Any) -> Any:
        """Canonical predictions (M, P, n_out) for layout data x (a new array)."""
        return self.forward(views, x)[-1].a.transpose(2, 1, 0).copy()
