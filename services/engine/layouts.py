"""Internal memory layouts of a pack's parameters: one flat buffer per pack.

All parameters of all members live in one 2-D buffer so that the update, the min-step-size
check and the finiteness check are a handful of whole-buffer operations, whatever the depth.

* model last ``(n_params, M)``: for tiny layers; every op is one contiguous vector op over M.
  Per layer W (out, in, M) then b (out, M).
* model first ``(M, n_params)``: for wide layers, feeding batched matmul. Per layer one
  augmented block [W | b] of shape (M, out, in + 1), so that with a row of ones appended to the
  layer input one matmul gives W a + b, and one matmul gives both dW and db.

Conversions to and from the canonical layout (M, *shape) are copies through views, hence exact.
"""

from __future__ import annotations


from typing import Any

from services.engine.architecture import Architecture

# Model-last wins while every layer is tiny (elementwise broadcasting beats M small matmuls).
MODEL_LAST_MAX_UNITS = 16


def prefers_model_last(arch: Architecture) -> bool:
    """Layout choice from the architecture alone, so a pack and its members run the same code."""
    return max(a * b for a, b in zip(arch.layers, arch.layers[1:])) <= MODEL_LAST_MAX_UNITS


class Layout:
    """Offsets of every tensor in the flat buffer and conversions for one pack."""

    def __init__(self, xp: Any, arch: Architecture, members: int, dtype: str) -> None:
        self.xp, self.arch, self.members, self.dtype = xp, arch, members, dtype
        self.model_last = prefers_model_last(arch)
        self.param_axis = 0 if self.model_last else 1
        self.names = list(arch.parameter_shapes())
        self.blocks: list[tuple[int, int, int]] = []  # (offset, n_out, n_in) per layer
        offset = 0
        for n_in, n_out in zip(arch.layers, arch.layers[1:]):
            self.blocks.append((offset, n_out, n_in))
            offset += n_out * (n_in + 1)
        self.n_params = offset

    def empty(self, members: int | None = None) -> Any:
        """An uninitialised buffer of this layout (for ``members`` members, default all)."""
        m = self.members if members is None else members
        shape = (self.n_params, m) if self.model_last else (m, self.n_params)
        return self.xp.empty(shape, dtype=self.dtype)

    def views(self, buf: Any) -> list[tuple[Any, Any]]:
        """Per layer, views of ``buf`` (any number of members; writes go to the buffer).

        Model last: (W (o, i, M), b (o, M)); model first: ([W | b] (M, o, i + 1), W (M, o, i)).
        """
        m, out = buf.shape[1] if self.model_last else buf.shape[0], []
        for off, o, i in self.blocks:
            if self.model_last:
                out.append((buf[off:off + o * i].reshape(o, i, m), buf[off + o * i:off + o * (i + 1)]))
            else:
                aug = buf[:, off:off + o * (i + 1)].reshape(m, o, i + 1)
                out.append((aug, aug[:, :, :i]))
        return out

    def tensors(self, buf: Any) -> dict[str, Any]:
        """name -> view of ``buf`` in working shape: (*shape, M) model last, (M, *shape) first."""
        out = {}
        for (w_name, b_name), (first, second) in zip(zip(self.names[0::2], self.names[1::2]), self.views(buf)):
            if self.model_last:
                out[w_name], out[b_name] = first, second
            else:
                out[w_name], out[b_name] = second, first[:, :, -1]
        return out

    def _working(self, canonical: Any) -> Any:
        """(M, *shape) -> the working shape (a view)."""
        return self.xp.moveaxis(canonical, 0, -1) if self.model_last else canonical

    def pack(self, canonical: dict[str, Any]) -> Any:
        """Canonical name -> (M, *shape) arrays -> a new flat buffer (exact copy)."""
        buf = self.empty()
        for name, view in self.tensors(buf).items():
            view[...] = self._working(self.xp.asarray(canonical[name], dtype=self.dtype))
        return buf

    def unpack(self, buf: Any) -> dict[str, Any]:
        """Flat buffer -> canonical name -> (M, *shape) contiguous arrays (exact copies)."""
        move = (lambda v: self.xp.moveaxis(v, -1, 0)) if self.model_last else (lambda v: v)
        return {name: self.xp.array(move(view), copy=True, order="C") for name, view in self.tensors(buf).items()}

    def expand(self, per_tensor: dict[str, Any]) -> Any:
        """name -> (M,) values broadcast over each tensor's entries: a full flat buffer."""
        buf = self.empty()
        for name, view in self.tensors(buf).items():
            value = self.xp.asarray(per_tensor[name], dtype=self.dtype)
            view[...] = value if self.model_last else value.reshape((-1,) + (1,) * (view.ndim - 1))
        return buf

    def members_of(self, buf: Any, index: Any) -> Any:
        """The sub-buffer of members ``index`` (host int array; advanced indexing: a copy)."""
        index = self.xp.asarray(index)
        return buf[:, index] if self.model_last else buf[index]

    def set_members(self, buf: Any, index: Any, value: Any) -> None:
        """Overwrite members ``index`` (host int array) of ``buf`` with ``value``."""
        index = self.xp.asarray(index)
        if self.model_last:
            buf[:, index] = value
        else:
            buf[index] = value

    def reduce_max(self, buf: Any) -> Any:
        """(M,) maximum over each member's entries."""
        return buf.max(axis=self.param_axis)



