"""Mini-batch schedule as a pure function of (batch_seed, step): no RNG state to save.

epoch = step // n_batches; order = default_rng([batch_seed, epoch]).permutation(P);
batch b = step % n_batches covers order[b * B:(b + 1) * B] (the last one may be shorter).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.engine.network import Network


class Batches:
    """The batches of one pack's data, taken from the data in the network's layout, on its
    device: each epoch's order is drawn on the host and moved once, a batch is a slice of it."""

    def __init__(self, net: Network, x: Any, y: Any, size: int, seed: int) -> None:
        self.net, self.size, self.seed = net, int(size), int(seed)
        self.x, self.y = net.data(x, y)  # points along axis 1 in both layouts
        self.points = int(self.x.shape[1])
        self.count = math.ceil(self.points / self.size)
        self._order: tuple[int, np.ndarray, Any] | None = None  # (epoch, host order, device order)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, Any]:
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.points)
            self._order = (epoch, order, self.net.xp.asarray(order))
        return self._order[1], self._order[2]

    def indices(self, step: int) -> np.ndarray:
        """Point indices of the batch used by update number ``step`` (0-based), host."""
        epoch, b = divmod(int(step), self.count)
        return self._epoch(epoch)[0][b * self.size:(b + 1) * self.size]

    def get(self, step: int) -> tuple[Any, Any]:
        """(x, y) of the batch for ``step`` in the network's layout (a gather on the device)."""
        epoch, b = divmod(int(step), self.count)
        index = self._epoch(epoch)[1][b * self.size:(b + 1) * self.size]
        xp = self.net.xp
        return xp.take(self.x, index, axis=1), xp.take(self.y, index, axis=1)

    @staticmethod
    def common_step(step: np.ndarray, running: np.ndarray) -> int:
        """The shared step of the running members (mini-batches need them in lockstep)."""
        steps = np.unique(step[running])
        if steps.size > 1:
            raise ValueError(f"mini-batch training needs running members at one step, got {steps[:5]}")
        return int(steps[0]) if steps.size else 0
