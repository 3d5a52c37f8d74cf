"""The update loop of ``train``: double-buffered parameters, fused forward/backward, stop events.

One iteration for the running members: step = lr * grad; (min_step_size test); update into the
spare buffer; forward at the new parameters, which gives both the SSR to record and (full batch)
the gradient for the next update; cheap stop tests; swap buffers. A stopped member has effective
learning rate and momentum 0, so its parameters stay bit-for-bit where they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.engine.backend import to_host
from services.engine.batches import Batches
from services.engine.config import PackConfig
from services.engine.network import Network
from services.engine.state import DIVERGED, MAX_STEPS, MIN_STEP_SIZE, TARGET_SSR, TrainState
from services.engine.stops import Stops, initial_reasons


class Trainer:
    """State of one ``train`` call (host bookkeeping + device buffers)."""

    def __init__(self, xp: Any, net: Network, config: PackConfig, state: TrainState, x: Any, y: Any) -> None:
        self.xp, self.net, self.layout, self.config = xp, net, net.layout, config
        lay = self.layout
        self.x, self.y = net.data(x, y)
        self.p, self.q, self.g, self.delta = lay.pack(state.parameters), lay.empty(), lay.empty(), lay.empty()
        self.g[...] = 0
        self.pv, self.qv, self.gv = lay.views(self.p), lay.views(self.q), lay.views(self.g)
        self.momentum = config.momentum is not None
        self.v = lay.pack(state.velocity) if self.momentum else None
        self.vq = lay.empty() if self.momentum else None
        self.v_keep: list[tuple[Any, Any]] = []
        self.state = state
        self.step0 = to_host(xp, state.step).astype(np.int64)
        self.ssr0 = to_host(xp, state.ssr)
        finite = to_host(xp, xp.isfinite(self.p).all(axis=lay.param_axis))
        reason = initial_reasons(to_host(xp, state.stop_reason).astype(np.int8), self.ssr0, finite,
                                 config.max_steps - self.step0, config.target_ssr.astype(self.ssr0.dtype))
        self.stops = Stops(xp, lay, config, reason, self.step0)
        self.batches = None
        if config.batch_size is not None:
            self.batches = Batches(net, x, y, config.batch_size, config.batch_seed)
            self.batch_step = self.batches.common_step(self.step0, self.stops.running)

    def run(self, max_updates: int) -> tuple[TrainState, np.ndarray]:
        """The loop; returns the new state and the host history (M, max_updates)."""
        hist = self.xp.empty((max(max_updates, 0), self.layout.members), dtype=self.layout.dtype)
        n_iter = 0
        if self.stops.n_running and max_updates > 0:
            self._gradient(self.pv, 0)
            for it in range(max_updates):
                if not self._update(it):
                    break
                ssr = self._evaluate(it + 1, it + 1 < max_updates, hist[it])
                self._check(it, ssr)
                self.p, self.q, self.pv, self.qv = self.q, self.p, self.qv, self.pv
                if self.momentum:
                    self.v, self.vq = self.vq, self.v
                n_iter = it + 1
                if not self.stops.n_running:
                    break
        return self._finish(hist, n_iter)

    def _gradient(self, views: list, offset: int) -> None:
        """Gradient at ``views`` into g: full data, or the mini-batch of step step0 + offset."""
        if self.batches is None:
            self.net.loss_and_grad(views, self.x, self.y, self.gv)
        else:
            xb, yb = self.batches.get(self.batch_step + offset)
            self.net.loss_and_grad(views, xb, yb, self.gv)

    def _evaluate(self, offset: int, want_grad: bool, out: Any) -> Any:
        """Full-data SSR at the new parameters q into ``out`` (and the next gradient if wanted)."""
        if self.batches is None and want_grad:
            return self.net.loss_and_grad(self.qv, self.x, self.y, self.gv, out)
        ssr = self.net.loss(self.qv, self.x, self.y, out)
        if want_grad:
            self._gradient(self.qv, offset)
        return ssr

    def _update(self, it: int) -> bool:
        """q = p - lr g (or the momentum update); False when min_step_size stopped everyone."""
        xp, stops, delta = self.xp, self.stops, self.delta
        xp.multiply(stops.lr, self.g, out=delta)
        if stops.check_min:
            largest = self.layout.reduce_max(xp.abs(delta, out=self.q))
            small = largest < stops.threshold
            if bool(small.any()):
                self._stop(to_host(xp, small), MIN_STEP_SIZE, it, self.v)
                if not stops.n_running:
                    return False
                xp.multiply(stops.lr, self.g, out=delta)
        if self.momentum:
            xp.multiply(stops.mu, self.v, out=self.vq)
            self.vq -= delta
            xp.add(self.p, self.vq, out=self.q)
        else:
            xp.subtract(self.p, delta, out=self.q)
        return True

    def _check(self, it: int, ssr: Any) -> None:
        """Stop tests after update ``it``: diverged, then target_ssr, then max_steps."""
        xp, stops = self.xp, self.stops
        if not math.isfinite(float(ssr.sum() + self.q.sum())):
            self._diverged(it, ssr)
        if stops.check_target:
            hit = ssr <= stops.target
            if bool(hit.any()):
                self._stop(to_host(xp, hit), TARGET_SSR, it + 1, self.vq)
        if stops.next_max == it + 1:
            self._stop(stops.steps_left == it + 1, MAX_STEPS, it + 1, self.vq)

    def _diverged(self, it: int, ssr: Any) -> None:
        """Members with non-finite SSR or parameters get back their previous values and stop."""
        xp, lay = self.xp, self.layout
        bad = ~(xp.isfinite(ssr) & xp.isfinite(self.q).all(axis=lay.param_axis))
        index = np.flatnonzero(to_host(xp, bad))
        if not index.size:
            return  # the cheap test overflowed on huge but finite values
        lay.set_members(self.q, index, lay.members_of(self.p, index))
        lay.set_members(self.g, index, 0)
        if self.momentum:
            lay.set_members(self.vq, index, lay.members_of(self.v, index))
        self._stop(to_host(xp, bad), DIVERGED, it, self.v)

    def _stop(self, hit: np.ndarray, code: int, done: int, velocity: Any) -> None:
        """Record a stop event and keep the stopping members' velocity (it is zeroed later)."""
        index = self.stops.stop(hit, code, done)
        if self.momentum and index.size:
            self.v_keep.append((index, self.layout.members_of(velocity, index)))
        self.stops.refresh()

    def _finish(self, hist: Any, n_iter: int) -> tuple[TrainState, np.ndarray]:
        """Assemble the new state and the NaN-padded host history."""
        xp, lay, stops = self.xp, self.layout, self.stops
        done = stops.done.copy()
        done[stops.running] = n_iter
        recorded = to_host(xp, hist)
        history = recorded.astype(np.float64).T
        history[np.arange(history.shape[1])[None, :] >= done[:, None]] = np.nan
        ssr = self.ssr0.copy()
        moved = np.flatnonzero(done > 0)
        ssr[moved] = recorded[done[moved] - 1, moved]
        velocity = self.state.velocity
        if self.momentum:
            for index, kept in self.v_keep:
                lay.set_members(self.v, index, kept)
            velocity = lay.unpack(self.v)
        new = TrainState(parameters=lay.unpack(self.p), velocity=velocity,
                         step=xp.asarray(self.step0 + done), ssr=xp.asarray(ssr),
                         stop_reason=xp.asarray(stops.reason.copy()))
        return new, np.ascontiguousarray(history)
