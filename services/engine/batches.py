"""Mini-batch schedule as a pure function of (batch_seed, step): no RNG state to save.

epoch = step // n_batches; order = default_rng([batch_seed, epoch]).permutation(P);
batch b = step % n_batches covers order[b * B:(b + 1) * B] (the last one may be shorter).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.engine.backend import to_host
from services.engine.network import Network


class Batches:
    """The batches of one pack's data, converted to the network's layout on demand."""

    def __init__(self, net: Network, x: Any, y: Any, size: int, seed: int) -> None:
        self.net, self.size, self.seed = net, int(size), int(seed)
        self.x, self.y = to_host(net.xp, x), to_host(net.xp, y)
        self.points = int(self.x.shape[0])
        self.count = math.ceil(self.points / self.size)
        self._orders: dict[int, np.ndarray] = {}

    def indices(self, step: int) -> np.ndarray:
        """Point indices of the batch used by update number ``step`` (0-based)."""
        epoch, b = divmod(int(step), self.count)
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.points)}
        return self._orders[epoch][b * self.size:(b + 1) * self.size]

    def get(self, step: int) -> tuple[Any, Any]:
        """(x, y) of the batch for ``step`` in the network's layout."""
        index = self.indices(step)
        return self.net.data(self.x[index], self.y[index])

    @staticmethod
    def common_step(step: np.ndarray, running: np.ndarray) -> int:
        """The shared step of the running members (mini-batches need them in lockstep)."""
        steps = np.unique(step[running])
        if steps.size > 1:
            raise ValueError(f"mini-batch training needs running members at one step, got {steps[:5]}")
        return int(steps[0]) if steps.size else 0
