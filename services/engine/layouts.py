"""Internal memory layouts of a pack's parameters: one flat buffer per pack, two layouts.

All parameters of all members live in one 2-D buffer, so that the update, the min-step-size
check and the finiteness check are a handful of whole-buffer operations, whatever the depth.

* ``ModelLast`` ``(n_params, M)``, for tiny layers: every op is one contiguous vector op over
  the M members. Per layer a ``TinyLayer``: weight (out, in, M), then bias (out, M).
* ``ModelFirst`` ``(M, n_params)``, for wide layers, feeding batched matrix products. Per layer
  one block [W | b]^T of shape (M, in + 1, out), a ``WideLayer``: with a row of ones under the
  layer input, one product gives W a + b, and the gradient block [dW | db]^T = [a; 1] dz^T
  comes out of one product directly in this orientation (no transposed copy per step).

Conversions to and from the canonical layout (M, *shape) are copies through views, hence exact.
The layout is chosen from the architecture alone (``layout_for``), never from M, so a pack runs
the same code as each of its members alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from services.engine.architecture import Architecture

# Model last wins while every layer is tiny (elementwise broadcasting beats M small matmuls).
MODEL_LAST_MAX_UNITS = 16


class TinyLayer(NamedTuple):
    """One layer's parameters in the model-last layout (views into the flat buffer)."""

    weight: Any  # (out, in, M)
    bias: Any  # (out, M)


class WideLayer(NamedTuple):
    """One layer's parameters in the model-first layout (views into the flat buffer)."""

    block: Any  # (M, in + 1, out): [W | b]^T, rows 0..in-1 are W^T, row in is b
    weight_t: Any  # (M, in, out): W^T, the first ``in`` rows of ``block``


def prefers_model_last(arch: Architecture) -> bool:
    """True when every layer is tiny (at most MODEL_LAST_MAX_UNITS weights)."""
    return max(a * b for a, b in zip(arch.layers, arch.layers[1:])) <= MODEL_LAST_MAX_UNITS


class Layout:
    """Offsets of every tensor in the flat buffer, and conversions, for one pack of M members.

    Subclasses say where the member axis is (``member_axis``), how a layer's tensors are cut
    out of the buffer (``layer_views``, ``named_views``) and how a canonical tensor (M, *shape)
    maps onto such a view and back (``to_working``, ``to_canonical``)."""

    member_axis = 0

    def __init__(self, xp: Any, arch: Architecture, members: int, dtype: str) -> None:
        self.xp, self.arch, self.members, self.dtype = xp, arch, members, dtype
        self.names = list(arch.parameter_shapes())
        self.offsets: list[int] = []  # where each layer's tensors start
        offset = 0
        for n_in, n_out in zip(arch.layers, arch.layers[1:]):
            self.offsets.append(offset)
            offset += n_out * (n_in + 1)
        self.n_params = offset
        self.param_axis = 1 - self.member_axis

    def empty(self, members: int | None = None) -> Any:
        """An uninitialised buffer of this layout (for ``members`` members, default all)."""
        m = self.members if members is None else members
        shape = (m, self.n_params) if self.member_axis == 0 else (self.n_params, m)
        return self.xp.empty(shape, dtype=self.dtype)

    def views(self, buf: Any) -> list[Any]:
        """Per layer, its ``TinyLayer`` or ``WideLayer`` views of ``buf`` (any member count)."""
        m = buf.shape[self.member_axis]
        return [self.layer_views(buf, off, n_in, n_out, m)
                for off, n_in, n_out in zip(self.offsets, self.arch.layers, self.arch.layers[1:])]

    def tensors(self, buf: Any) -> dict[str, Any]:
        """name -> view of ``buf``, shaped like the canonical tensor but with the member axis
        where this layout keeps it."""
        out = {}
        for i, layer in enumerate(self.views(buf)):
            out[f"layers.{i}.weight"], out[f"layers.{i}.bias"] = self.named_views(layer)
        return out

    def pack(self, canonical: dict[str, Any]) -> Any:
        """Canonical name -> (M, *shape) arrays -> a new flat buffer (exact copy)."""
        buf = self.empty()
        for name, view in self.tensors(buf).items():
            view[...] = self.to_working(self.xp.asarray(canonical[name], dtype=self.dtype))
        return buf

    def unpack(self, buf: Any) -> dict[str, Any]:
        """Flat buffer -> canonical name -> (M, *shape) contiguous arrays (exact copies)."""
        return {name: self.xp.array(self.to_canonical(view), copy=True, order="C")
                for name, view in self.tensors(buf).items()}

    def expand(self, per_member: dict[str, Any]) -> Any:
        """name -> (M,) values, each repeated over its tensor's entries: a full flat buffer."""
        buf = self.empty()
        for name, view in self.tensors(buf).items():
            value = self.xp.asarray(per_member[name], dtype=self.dtype)
            view[...] = self.to_working(value.reshape((-1,) + (1,) * (view.ndim - 1)))
        return buf

    def members_of(self, buf: Any, index: Any) -> Any:
        """The sub-buffer of members ``index`` (host int array; a copy)."""
        return self.xp.take(buf, self.xp.asarray(index), axis=self.member_axis)

    def set_members(self, buf: Any, index: Any, value: Any) -> None:
        """Overwrite members ``index`` (host int array) of ``buf`` with ``value``."""
        where = (slice(None),) * self.member_axis + (self.xp.asarray(index),)
        buf[where] = value

    def reduce_max(self, buf: Any) -> Any:
        """(M,) maximum over each member's entries."""
        return buf.max(axis=self.param_axis)


class ModelLast(Layout):
    """(n_params, M): tensors (*shape, M), member axis last."""

    member_axis = 1

    def layer_views(self, buf: Any, off: int, n_in: int, n_out: int, m: int) -> TinyLayer:
        return TinyLayer(buf[off:off + n_out * n_in].reshape(n_out, n_in, m),
                         buf[off + n_out * n_in:off + n_out * (n_in + 1)])

    def named_views(self, layer: TinyLayer) -> tuple[Any, Any]:
        return layer.weight, layer.bias

    def to_working(self, canonical: Any) -> Any:
        """(M, *shape) -> (*shape, M), a view."""
        return self.xp.moveaxis(canonical, 0, -1)

    def to_canonical(self, view: Any) -> Any:
        return self.xp.moveaxis(view, -1, 0)


class ModelFirst(Layout):
    """(M, n_params): tensors transposed inside [W | b]^T blocks, member axis first."""

    def layer_views(self, buf: Any, off: int, n_in: int, n_out: int, m: int) -> WideLayer:
        block = buf[:, off:off + n_out * (n_in + 1)].reshape(m, n_in + 1, n_out)
        return WideLayer(block, block[:, :n_in, :])

    def named_views(self, layer: WideLayer) -> tuple[Any, Any]:
        return layer.weight_t, layer.block[:, -1, :]  # W^T (M, in, out) and b (M, out)

    def to_working(self, canonical: Any) -> Any:
        """Weights (M, out, in) -> (M, in, out), a view; biases (M, out) unchanged."""
        return self.xp.swapaxes(canonical, 1, 2) if canonical.ndim == 3 else canonical

    def to_canonical(self, view: Any) -> Any:
        return self.to_working(view)


def layout_for(xp: Any, arch: Architecture, members: int, dtype: str) -> Layout:
    """The layout for ``arch``: model last when every layer is tiny, else model first."""
    cls = ModelLast if prefers_model_last(arch) else ModelFirst
    return cls(xp, arch, members, dtype)
