"""The update loop of ``train``: double-buffered parameters, fused forward/backward, stop events.

One iteration for the running members: step = lr * grad; (min_step_size test); update into the
spare buffer; forward at the new parameters, which gives both the SSR to record and (full batch)
the gradient for the next update; cheap stop tests; swap buffers. A stopped member has effective
learning rate and momentum 0, so its parameters stay bit-for-bit where they are. On a GPU the
stop tests are read once per block of updates instead of after each (``blocks``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.engine.backend import to_host
from services.engine.batches import Batches
from services.engine.blocks import Blocks, block_size
from services.engine.config import PackConfig
from services.engine.network import Limits, Network, Rates, UpdateBuffers
from services.engine.state import DIVERGED, MAX_STEPS, MIN_STEP_SIZE, TARGET_SSR, TrainState
from services.engine.stops import Stops, initial_reasons

# Whether a network's compiled loop may take the updates that need no host decision (tests
# switch it off to check the two ways give the same bits).
PLAIN_UPDATES = True


class Trainer:
    """State of one ``train`` call (host bookkeeping + device buffers).

    Device buffers, all in the pack's flat layout: ``params`` (current parameters), ``spare``
    (where the update writes the next ones; the two swap after each step, so the previous
    values are still at hand when a member diverges), ``grad`` (dSSR/dparameters at
    ``params``), ``grad_next`` (where a compiled loop puts the gradient at ``spare``), ``delta``
    (lr * grad), ``velocity`` / ``spare_velocity`` (momentum, swapped alike); ``*_views`` are
    their per-layer views (see layouts)."""

    def __init__(self, xp: Any, net: Network, config: PackConfig, state: TrainState, x: Any, y: Any) -> None:
        config.check(net.arch)  # ``train`` checked already; this guards a Trainer built by hand
        self.xp, self.net, self.layout, self.config = xp, net, net.layout, config
        lay = self.layout
        self.x, self.y = net.data(x, y)
        self.params, self.spare, self.grad, self.delta = lay.pack(state.parameters), lay.empty(), lay.empty(), lay.empty()
        self.grad[...] = 0
        self.grad_next = lay.empty()  # where a compiled loop puts the gradient at spare
        self.grad_next_views = lay.views(self.grad_next)
        self.params_views, self.spare_views, self.grad_views = lay.views(self.params), lay.views(self.spare), lay.views(self.grad)
        self.momentum = config.momentum is not None
        self.velocity = lay.pack(state.velocity) if self.momentum else None
        self.spare_velocity = lay.empty() if self.momentum else None
        self.stopped_velocity: list[tuple[Any, Any]] = []  # (members, velocity they stopped with)
        self.parked: list[tuple[Any, Any, Any]] = []  # (members, parameters, velocity) set aside
        self.state = state
        self.step0 = to_host(xp, state.step).astype(np.int64)
        self.ssr0 = to_host(xp, state.ssr)
        finite = to_host(xp, xp.isfinite(self.params).all(axis=lay.param_axis))
        reason = initial_reasons(to_host(xp, state.stop_reason).astype(np.int8), self.ssr0, finite,
                                 config.max_steps - self.step0, config.target_ssr.astype(self.ssr0.dtype))
        self.stops = Stops(xp, lay, config, reason, self.step0)
        with np.errstate(invalid="ignore"):
            broken = ~self.stops.running & ~(finite & np.isfinite(self.ssr0))
        if broken.any():
            self._park(np.flatnonzero(broken))
        self.batches = None
        if config.batch_size is not None:
            self.batches = Batches(net, x, y, config.batch_size, config.batch_seed)
            self.batch_step = self.batches.common_step(self.step0, self.stops.running)

    def run(self, max_updates: int) -> tuple[TrainState, np.ndarray]:
        """The loop; returns the new state and the host history (M, max_updates)."""
        hist = self.xp.empty((max(max_updates, 0), self.layout.members), dtype=self.layout.dtype)
        it = 0  # the update index: updates taken by the members still running
        size = block_size(self.xp)
        blocks = Blocks(self, size) if size and self.stops.n_running else None
        if self.stops.n_running and max_updates > 0:
            self._gradient(self.params_views, 0)
            while it < max_updates and self.stops.n_running:
                it += self._plain_updates(hist, it, max_updates)
                if blocks is not None:
                    it += blocks.take(hist, it, max_updates)
                if it == max_updates or not self._update(it):
                    break
                ssr = self._evaluate(it + 1, it + 1 < max_updates, hist[it])
                self._check(it, ssr)
                self._swap()
                it += 1
        return self._finish(hist, it)

    def _plain_updates(self, hist: Any, it: int, max_updates: int) -> int:
        """From update ``it``, the updates that need no host decision, taken by the network in
        one compiled call where it has one (the tiny model-last network with numba): up to the
        next max_steps stop, stopping before an update whose stop tests would fire (the loop
        then takes that one). None with mini-batches, or when switched off (PLAIN_UPDATES).
        Same bits as taking them one at a time (tests/engine/test_plain_updates.py)."""
        stops = self.stops
        count = min(max_updates, stops.next_max - 1) - it
        if not PLAIN_UPDATES or self.batches is not None or count <= 0:
            return 0
        buffers = UpdateBuffers(self.params, self.spare, self.grad, self.grad_next, self.velocity, self.spare_velocity)
        return self.net.plain_updates(buffers, Rates(stops.lr, stops.mu), Limits(stops.threshold, stops.target),
                                      stops.check_min, self.spare_views, self.grad_next_views, self.x, self.y, hist,
                                      it, count)

    def roles(self) -> tuple:
        """Which buffer plays which part (parameters or spare, velocity or its spare), to put back."""
        return (self.params, self.spare, self.params_views, self.spare_views, self.velocity, self.spare_velocity)

    def set_roles(self, roles: tuple) -> None:
        """Undo the swaps since ``roles()`` returned ``roles``."""
        (self.params, self.spare, self.params_views, self.spare_views, self.velocity, self.spare_velocity) = roles

    def _swap(self) -> None:
        """The new values (spare) become the current ones; the old ones become the spare."""
        self.params, self.spare = self.spare, self.params
        self.params_views, self.spare_views = self.spare_views, self.params_views
        if self.momentum:
            self.velocity, self.spare_velocity = self.spare_velocity, self.velocity

    def _gradient(self, views: list, offset: int) -> None:
        """Gradient at ``views`` into grad: full data, or the mini-batch of step step0 + offset."""
        if self.batches is None:
            self.net.loss_and_grad(views, self.x, self.y, self.grad_views)
        else:
            xb, yb = self.batches.get(self.batch_step + offset)
            self.net.loss_and_grad(views, xb, yb, self.grad_views)

    def _evaluate(self, offset: int, want_grad: bool, out: Any) -> Any:
        """Full-data SSR at the new parameters (spare) into ``out`` (and the next gradient if wanted)."""
        if self.batches is None and want_grad:
            return self.net.loss_and_grad(self.spare_views, self.x, self.y, self.grad_views, out)
        ssr = self.net.loss(self.spare_views, self.x, self.y, out)
        if want_grad:
            self._gradient(self.spare_views, offset)
        return ssr

    def _update(self, it: int) -> bool:
        """spare = params - lr * grad, or with momentum mu: spare_velocity = mu * velocity - lr * grad,
        spare = params + spare_velocity. False when min_step_size stopped everyone."""
        xp, stops = self.xp, self.stops
        if not stops.check_min:
            self._step()
            return True
        self._delta()
        small = self._small_steps()
        if bool(small.any()):
            self._stop(to_host(xp, small), MIN_STEP_SIZE, it, self.velocity)
            if not stops.n_running:
                return False
            self._delta()
        self._apply()
        return True

    def _step(self, flag: Any = None) -> bool:
        """``_delta`` then ``_apply``; in one kernel where the network's kernels fuse them (CuPy's,
        ``cupy_kernels``), which also set ``flag`` (if given) where a new parameter is not finite:
        True when they did. Only for updates with no min_step_size test, which reads delta."""
        fused = getattr(self.net.kernels, "update", None)
        if fused is None:
            self._delta()
            self._apply()
            return False
        fused(UpdateBuffers(self.params, self.spare, self.grad, self.grad_next, self.velocity, self.spare_velocity),
              Rates(self.stops.lr, self.stops.mu), self.stops.still, flag)
        return flag is not None

    def _delta(self) -> None:
        """delta = lr * grad, and exactly 0 where lr is 0 (``Stops.still``): a frozen tensor's
        (or a stopped member's) gradient may be infinite, and 0 * inf would be NaN."""
        self.xp.multiply(self.stops.lr, self.grad, out=self.delta)
        if self.stops.still is not None:
            self.xp.copyto(self.delta, 0, where=self.stops.still)

    def _small_steps(self) -> Any:
        """(M,) device bool: the members whose largest step (in delta) is under min_step_size."""
        largest = self.layout.reduce_max(self.xp.abs(self.delta, out=self.spare))
        return largest < self.stops.threshold

    def _apply(self) -> None:
        """The new parameters (and velocity) from delta = lr * grad, into the spare buffers."""
        xp = self.xp
        if self.momentum:
            xp.multiply(self.stops.mu, self.velocity, out=self.spare_velocity)
            self.spare_velocity -= self.delta
            xp.add(self.params, self.spare_velocity, out=self.spare)
        else:
            xp.subtract(self.params, self.delta, out=self.spare)

    def _flagged_update(self, it: int, max_updates: int, hist: Any, flag: Any) -> None:
        """Update ``it`` as ``run`` takes it, the kernels in the same order, but with the stop
        tests on the parameters written to ``flag`` (device bool (1,), False when the block
        began) instead of read and acted on: one update of a block (``blocks``). The tests on the
        SSR follow for the whole block (``flag_ssr_rows``). Set where a parameter is not finite
        (``_check`` would restore its member) or a step is under min_step_size (``_update``
        would stop its member)."""
        xp, stops = self.xp, self.stops
        small, tested = None, False
        if stops.check_min:
            self._delta()
            small = self._small_steps().any()
            self._apply()
        else:
            tested = self._step(flag)
        self._evaluate(it + 1, it + 1 < max_updates, hist[it])
        if not tested:  # the update's kernel did not set the flag: a test of its own
            fused = getattr(self.net.kernels, "any_nonfinite", None)
            if fused is not None:
                fused(self.spare, flag)
            else:
                flag[...] = ~xp.isfinite(self.spare).all()
        if small is not None:
            xp.logical_or(flag, small, out=flag)
        self._swap()

    def flag_ssr_rows(self, rows: Any, flags: Any) -> None:
        """The stop tests on the SSR of a block's updates, on their recorded rows (k, M): flags
        (k,) set where a member's SSR is not finite or at its target SSR (``_check`` would act).
        One pass over the block instead of several kernels per update."""
        xp = self.xp
        fired = ~xp.isfinite(rows).all(axis=1)
        if self.stops.check_target:
            fired |= (rows <= self.stops.target).any(axis=1)
        flags |= fired

    def _check(self, it: int, ssr: Any) -> None:
        """Stop tests after update ``it``: diverged, then target_ssr, then max_steps. One read
        from the device for both tests (a host synchronisation on a GPU): ``health`` is not
        finite when any member's SSR or parameter is not; ``hits`` counts members at target."""
        xp, stops = self.xp, self.stops
        health = ssr.sum() + self.spare.sum()
        hit = ssr <= stops.target if stops.check_target else None
        if hit is None:
            health, hits = float(health), 0.0
        else:
            health, hits = (float(v) for v in to_host(xp, xp.stack([health, hit.sum(dtype=health.dtype)])))
        if not math.isfinite(health):
            self._diverged(it, ssr)
        if hits:  # a member that diverged above has a NaN or inf SSR: never a hit
            self._stop(to_host(xp, hit), TARGET_SSR, it + 1, self.spare_velocity)
        if stops.next_max == it + 1:
            self._stop(stops.steps_left == it + 1, MAX_STEPS, it + 1, self.spare_velocity)

    def _diverged(self, it: int, ssr: Any) -> None:
        """Members with non-finite SSR or parameters get back their previous values and stop."""
        xp, lay = self.xp, self.layout
        bad = to_host(xp, ~(xp.isfinite(ssr) & xp.isfinite(self.spare).all(axis=lay.param_axis)))
        stopped_before = np.flatnonzero(bad & ~self.stops.running)
        if stopped_before.size:  # a stopped member's 0 * inf gradient: it must not move
            lay.set_members(self.spare, stopped_before, lay.members_of(self.params, stopped_before))
            self._park(stopped_before)
            bad[stopped_before] = False
        index = np.flatnonzero(bad)
        if not index.size:
            return  # the cheap test overflowed on huge but finite values
        lay.set_members(self.spare, index, lay.members_of(self.params, index))
        lay.set_members(self.grad, index, 0)
        if self.momentum:
            lay.set_members(self.spare_velocity, index, lay.members_of(self.velocity, index))
        self._stop(bad, DIVERGED, it, self.velocity)

    def _park(self, index: np.ndarray) -> None:
        """Stopped members whose numbers are not finite (or whose gradient overflows) would
        trip the divergence test on every step: their values are set aside and their working
        copies zeroed; ``_finish`` puts the values back."""
        lay = self.layout
        self.parked.append((index, lay.members_of(self.params, index),
                            lay.members_of(self.velocity, index) if self.momentum else None))
        for buf in (self.params, self.spare, self.grad, self.velocity, self.spare_velocity):
            if buf is not None:
                lay.set_members(buf, index, 0)

    def _stop(self, hit: np.ndarray, code: int, done: int, velocity: Any) -> None:
        """Record a stop event and keep the stopping members' velocity (it is zeroed later)."""
        index = self.stops.stop(hit, code, done)
        if self.momentum and index.size:
            self.stopped_velocity.append((index, self.layout.members_of(velocity, index)))
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
        for index, parameters, velocity in self.parked:
            lay.set_members(self.params, index, parameters)
            if self.momentum:
                lay.set_members(self.velocity, index, velocity)
        velocity = self.state.velocity
        if self.momentum:
            for index, kept in self.stopped_velocity:
                lay.set_members(self.velocity, index, kept)
            velocity = lay.unpack(self.velocity)
        new = TrainState(parameters=lay.unpack(self.params), velocity=velocity,
                         step=xp.asarray(self.step0 + done), ssr=xp.asarray(ssr),
                         stop_reason=xp.asarray(stops.reason.copy()))
        return new, np.ascontiguousarray(history)
