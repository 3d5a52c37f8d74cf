"""Per-member stop rules of one ``train`` call, kept on the host and applied on events.

The training loop runs only cheap whole-pack tests each step (one comparison for the min step
size, one finiteness test of a sum, one comparison for the target SSR, an integer compare for
max_steps). When a test fires, these methods find the members concerned, record their reason and
update count, and rebuild the device-side masks: a stopped member's effective learning rate,
momentum, threshold and target become neutral, so it stays put without any per-step masking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.engine.config import PackConfig
from services.engine.layouts import Layout
from services.engine.state import DIVERGED, MAX_STEPS, RUNNING, TARGET_SSR


def initial_reasons(reason: np.ndarray, ssr: np.ndarray, finite: np.ndarray,
                    steps_left: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Stop rules that need no gradient, for members still running (all arrays (M,), host).

    Precedence as in the loop: diverged (non-finite SSR or parameters), then target_ssr, then
    max_steps (steps_left = max_steps - step <= 0).
    """
    reason = reason.copy()
    with np.errstate(invalid="ignore"):
        rules = ((~(np.isfinite(ssr) & finite), DIVERGED), (ssr <= target, TARGET_SSR),
                 (steps_left <= 0, MAX_STEPS))
    for hit, code in rules:
        reason[(reason == RUNNING) & hit] = code
    return reason


def min_step_threshold(min_step_size: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """min_step_size in the pack's dtype. One too small for it (below float32's smallest
    subnormal, ~1.4e-45) would round to 0, which disables the rule; a step of the dtype is below
    such a value only when it is exactly 0, so the threshold is the smallest subnormal instead."""
    threshold = min_step_size.astype(dtype)
    return np.where((min_step_size > 0) & (threshold == 0), np.finfo(dtype).smallest_subnormal, threshold)


class Stops:
    """Reasons, update counts and device masks of a pack during one ``train`` call.

    Device masks, flat buffers in the pack's layout: ``lr`` and ``mu`` are each entry's learning
    rate and momentum, 0 where the member stopped or the tensor is frozen; ``still`` is where
    ``lr`` is 0 (None when nowhere), whose step is set to 0 rather than 0 * gradient: a frozen
    tensor's gradient may overflow while the trainable ones are fine, and 0 * inf = NaN would
    move it and stop its member as diverged; ``threshold`` and ``target`` (M,) are
    min_step_size and target_ssr, neutral (0, -inf) for stopped members."""

    def __init__(self, xp: Any, layout: Layout, config: PackConfig, reason: np.ndarray,
                 step: np.ndarray) -> None:
        self.xp, self.layout, self.config = xp, layout, config
        self.dtype = np.dtype(config.dtype)
        self.reason = reason.astype(np.int8).copy()
        self.done = np.zeros(reason.shape[0], dtype=np.int64)
        self.steps_left = config.max_steps - step
        self.refresh()

    @property
    def running(self) -> np.ndarray:
        """(M,) bool, host."""
        return self.reason == RUNNING

    def stop(self, hit: np.ndarray, code: int, done: int) -> np.ndarray:
        """Stop the running members where ``hit`` after ``done`` updates; their indices."""
        index = np.flatnonzero(self.running & hit)
        self.reason[index] = code
        self.done[index] = done
        return index

    def refresh(self) -> None:
        """Rebuild the device masks after reasons changed (rare: once per stop event)."""
        xp, c, run = self.xp, self.config, self.running
        self.n_running = int(run.sum())
        self.lr = self.layout.expand({n: c.learning_rate * (c.trainable_mask(n) & run)
                                      for n in self.layout.names})
        still = self.lr == 0
        self.still = still if bool(still.any()) else None
        self.mu = None
        if c.momentum is not None:
            self.mu = self.layout.expand({n: c.momentum * (c.trainable_mask(n) & run)
                                          for n in self.layout.names})
        threshold = min_step_threshold(np.where(run, c.min_step_size, 0.0), self.dtype)
        self.check_min = bool(np.any(threshold > 0))
        self.threshold = xp.asarray(threshold)
        target = np.where(run, c.target_ssr, -np.inf).astype(self.dtype)
        self.check_target = bool(np.any(target > -np.inf))
        self.target = xp.asarray(target)
        self.next_max = int(self.steps_left[run].min()) if self.n_running else -1
