"""Blocks of updates with no read from the device, for GPUs.

The loop's stop tests read one number from the device after every update (``Trainer._check``).
On a GPU that read makes the host wait until the device has finished, so the kernel launches of
the next update cannot overlap the work of this one, and a small pack's step costs the sum of
the two instead of the larger. A block takes up to ``size`` updates with the tests' outcome of
each kept on the device (one flag per update: a non-finite parameter or a step under
min_step_size, set as the update runs; a non-finite SSR or a member at its target SSR, set for
the whole block from its rows of the history) and reads the flags once, at the end:
- no flag set: the block stands. It ran the same kernels in the same order as the loop taking
  one update at a time, so it left the same bits.
- the first flag at update j of the block: parameters, gradient and velocity go back to what
  they were at the block's start, and the loop takes the updates up to and including j one at a
  time, which applies the stop exactly where it falls; blocks resume after it (shorter, and
  later, while blocks keep being cut).
A block never reaches a member's max_steps (the loop stops those one at a time), so that rule
needs no flag. Blocks are used where the namespace is not NumPy: on the CPU a test costs no wait.
On CuPy a block's updates run as one CUDA graph where they can, from the second time the same
block comes (``cuda_graphs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from services.engine import cuda_graphs
from services.engine.backend import is_numpy, to_host

if TYPE_CHECKING:
    from services.engine.loop import Trainer

# Updates per block: long enough that one read per block costs little, short enough that a
# stop inside a block wastes few updates (they are taken again, one at a time).
SIZE = 32
FORCE: int | None = None  # tests: blocks of this size on any namespace, NumPy too (0: none)


def block_size(xp: Any) -> int:
    """Updates per block for namespace ``xp``; 0: no blocks."""
    if FORCE is not None:
        return FORCE
    return 0 if is_numpy(xp) else SIZE


class Blocks:
    """The blocks of one ``train`` call: the device flags, and where the loop must go one
    update at a time (``eager_until``) after a block that a stop cut short."""

    def __init__(self, trainer: Trainer, size: int) -> None:
        self.trainer, self.full, self.size = trainer, size, size
        self.flags = trainer.xp.zeros(size, dtype=bool)
        self.eager_until = 0  # update index from which blocks may run again
        self.backoff = 0  # more updates taken singly after a cut block, doubling while cuts repeat

    def take(self, hist: Any, it: int, max_updates: int) -> int:
        """Updates taken in blocks from update ``it``: none when a stop is near or was just
        found; stops before the next max_steps stop, like the compiled loop."""
        limit = min(max_updates, self.trainer.stops.next_max - 1)
        taken = 0
        while it + taken >= self.eager_until and limit - (it + taken) >= 2:
            count = min(self.size, limit - (it + taken))
            first = self._run(hist, it + taken, count, max_updates)
            if first is not None:
                # While stops keep coming (a finite member whose sums overflow fires every
                # block), shorter blocks and more single updates between them; back to full
                # length after a block that stands.
                self.size = max(2, self.size // 4)
                self.eager_until = it + taken + first + 1 + self.backoff
                self.backoff = min(self.full, max(1, 2 * self.backoff))
                break
            self.size, self.backoff = min(self.full, 2 * self.size), 0
            taken += count
        return taken

    def _run(self, hist: Any, start: int, count: int, max_updates: int) -> int | None:
        """``count`` updates from ``start``; None when they stand, else the block's first update
        whose stop tests fired (the trainer's buffers are then back at the block's start)."""
        t = self.trainer
        saved = [buf.copy() for buf in (t.params, t.grad, t.velocity) if buf is not None]
        replayed = cuda_graphs.replay(t, count) if cuda_graphs.usable(t, start, count, max_updates) else None
        if replayed is None:
            flags = self.flags[:count]
            flags.fill(False)
            for j in range(count):
                t._flagged_update(start + j, max_updates, hist, flags[j:j + 1])
            t.net.graphs.warm.add(cuda_graphs.variant(t))  # every kernel of such a block is loaded
        else:  # the same updates as one CUDA graph, their rows and flags in its own buffers
            flags = replayed.flags
            hist[start:start + count] = replayed.rows
        t.flag_ssr_rows(hist[start:start + count], flags)
        fired = to_host(t.xp, flags)
        if not fired.any():
            return None
        for buf, value in zip((t.params, t.grad, t.velocity), saved):  # the roles may have swapped:
            buf[...] = value  # the values at the start go where the loop now reads them
        return int(np.argmax(fired))
