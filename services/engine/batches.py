"""Mini-batch schedule as a pure function of (batch_seed, step): no RNG state to save.

epoch = step // n_batches; order = default_rng([batch_seed, epoch]).permutation(P);
batch b = step % n_batches covers order[b * B:(b + 1) * B] (the last one may be shorter).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from services.engine.network import Network


class EpochOrder(NamedTuple):
    """One epoch's permutation of the points, on the host and on the network's device."""

    epoch: int
    host: np.ndarray
    device: Any


class Batches:
    """The batches of one pack's data, taken from the data in the network's layout, on its
    device: each epoch's order is drawn on the host and moved once, a batch is a slice of it."""

    def __init__(self, net: Network, x: Any, y: Any, size: int, seed: int) -> None:
        self.net, self.size, self.seed = net, int(size), int(seed)
        self.x, self.y = net.data(x, y)  # points along axis 1 in both layouts
        self.points = int(self.x.shape[1])
        self.count = math.ceil(self.points / self.size)
        self._order: EpochOrder | None = None  # the last epoch's, kept: steps come in order

    def _epoch(self, epoch: int) -> EpochOrder:
        if self._order is None or self._order.epoch != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.points)
            self._order = EpochOrder(epoch, order, self.net.xp.asarray(order))
        return self._order

    def indices(self, step: int) -> np.ndarray:
        """Point indices of the batch used by update number ``step`` (0-based), host."""
        epoch, b = divmod(int(step), self.count)
        return self._epoch(epoch).host[b * self.size:(b + 1) * self.size]

    def get(self, step: int) -> tuple[Any, Any]:
        """(x, y) of the batch for ``step`` in the network's layout (a gather on the device)."""
        epoch, b = divmod(int(step), self.count)
        index = self._epoch(epoch).device[b * self.size:(b + 1) * self.size]
        xp = self.net.xp
        return xp.take(self.x, index, axis=1), xp.take(self.y, index, axis=1)

    @staticmethod
    def common_step(step: np.ndarray, running: np.ndarray) -> int:
        """The shared step of the running members (mini-batches need them in lockstep)."""
        steps = np.unique(step[running])
        if steps.size > 1:
            raise ValueError(f"mini-batch training needs running members at one step, got {steps[:5]}")
        return int(steps[0]) if steps.size else 0
