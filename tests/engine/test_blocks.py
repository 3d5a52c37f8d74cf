"""Blocks of updates with no read from the device (``services.engine.blocks``, the default on a
GPU) give the bits of the one-update-at-a-time loop, whatever stops members inside a block.

Run here on NumPy, with blocks forced on (``blocks.FORCE``) and the compiled loop of the tiny
network switched off, so that every update goes through the blocks or the plain loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.engine import Architecture, PackConfig, blocks, init_state, loop, train
from services.engine.state import DIVERGED, MAX_STEPS, MIN_STEP_SIZE, RUNNING, TARGET_SSR
from tests.engine.helpers import assert_same_bits, fast_and_slow, reasons, stacked, switched

M = 10
STATQUEST = Architecture((1, 2, 1), "softplus")
WIDE = Architecture((1, 24, 24, 1), "tanh")  # the model-first layout


@pytest.fixture(autouse=True)
def plain_loop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "PLAIN_UPDATES", False)


def both_ways(arch: Architecture, config: PackConfig, updates: int, chunks: int = 1, size: int = 7,
              points: int = 9) -> tuple[tuple, tuple]:
    """(state, history) trained in blocks of ``size`` updates, then one update at a time."""
    return fast_and_slow(arch, config, updates, lambda on: switched(blocks, "FORCE", size if on else 0), M,
                         chunks, points)


@pytest.fixture
def block_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None]]:
    """(updates asked, first fired update or None) of every block run."""
    seen: list[tuple[int, int | None]] = []
    original = blocks.Blocks._run

    def counted(self, hist, start, count, max_updates):  # noqa: ANN001, ANN202
        seen.append((count, first := original(self, hist, start, count, max_updates)))
        return first

    monkeypatch.setattr(blocks.Blocks, "_run", counted)
    return seen


@pytest.mark.parametrize("arch", [STATQUEST, WIDE], ids=["model-last", "model-first"])
def test_no_stop_in_sight_every_update_is_in_blocks(arch: Architecture, block_runs: list) -> None:
    config = PackConfig(learning_rate=np.geomspace(1e-3, 1e-2, M))
    fast, slow = both_ways(arch, config, 100, size=32)
    assert_same_bits(fast, slow)
    assert block_runs == [(32, None), (32, None), (32, None), (4, None)]  # 100 updates, none alone


@pytest.mark.parametrize("chunks", [1, 4])
@pytest.mark.parametrize("arch", [STATQUEST, WIDE], ids=["model-last", "model-first"])
def test_members_diverging_and_stopping_at_max_steps(arch: Architecture, chunks: int, block_runs: list) -> None:
    high = 500 if arch is STATQUEST else 50
    config = PackConfig(learning_rate=np.geomspace(0.01, high, M), max_steps=np.arange(M) * 37 + 3)
    fast, slow = both_ways(arch, config, 400, chunks)
    assert {MAX_STEPS, DIVERGED} <= reasons(slow)
    assert_same_bits(fast, slow)
    assert any(first is not None for _, first in block_runs)  # a block was cut short and redone


def test_members_reaching_their_target(block_runs: list) -> None:
    free = PackConfig(learning_rate=np.full(M, 0.01))
    (_, history), _ = both_ways(STATQUEST, free, 300)
    config = PackConfig(learning_rate=np.full(M, 0.01), target_ssr=history[np.arange(M), np.arange(M) * 20 + 5])
    block_runs.clear()
    fast, slow = both_ways(STATQUEST, config, 300)
    assert reasons(slow) == {TARGET_SSR}
    np.testing.assert_array_equal(fast[0].step, np.arange(M) * 20 + 6)
    assert_same_bits(fast, slow)
    assert sum(first is not None for _, first in block_runs) >= M - 1  # one cut per stop or so


@pytest.mark.parametrize("chunks", [1, 3])
def test_momentum_and_min_step_size(chunks: int) -> None:
    config = PackConfig(learning_rate=np.geomspace(0.001, 0.5, M), momentum=np.linspace(0, 0.9, M),
                        min_step_size=np.geomspace(1e-6, 1e-3, M), max_steps=np.arange(M) * 50 + 7)
    fast, slow = both_ways(STATQUEST, config, 600, chunks)
    assert {MAX_STEPS, MIN_STEP_SIZE} <= reasons(slow)
    assert_same_bits(fast, slow)


def test_momentum_diverging_in_the_wide_layout() -> None:
    config = PackConfig(learning_rate=np.geomspace(0.01, 20, M), momentum=np.linspace(0, 0.95, M))
    fast, slow = both_ways(WIDE, config, 200)
    assert DIVERGED in reasons(slow)
    assert_same_bits(fast, slow)


def test_mini_batches_and_float32() -> None:
    config = PackConfig(learning_rate=np.geomspace(0.001, 0.2, M), batch_size=4, batch_seed=3, dtype="float32",
                        trainable={"layers.0.weight": np.arange(M) % 2 == 0})
    fast, slow = both_ways(WIDE, config, 90, chunks=3, points=11)
    assert fast[0].parameters["layers.0.weight"].dtype == np.float32
    assert_same_bits(fast, slow)


def test_blocks_are_the_default_off_numpy_only() -> None:
    class FakeCupy:  # any namespace that is not NumPy
        pass

    assert blocks.FORCE is None
    assert blocks.block_size(np) == 0 and blocks.block_size(FakeCupy) == blocks.SIZE >= 2


def overflowing_pack() -> tuple[Architecture, PackConfig, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Two members hold a huge but finite first-layer weight that no input reaches (relu of
    negative points): the pack's sum of parameters overflows though nobody diverges."""
    arch = Architecture((1, 2, 1), "relu")
    x = -np.linspace(0.1, 2.0, 9).reshape(-1, 1)
    params = stacked(arch, list(range(M)))
    params["layers.0.weight"][:2] = 1e308  # z = w x <= -1e307: relu 0, every slope 0
    params["layers.0.bias"][:2] = 0.0
    return arch, PackConfig(learning_rate=np.full(M, 0.01)), params, x, np.sin(x)


def test_a_sum_that_overflows_with_every_number_finite_does_not_cut_blocks(block_runs: list) -> None:
    """The loop's cheap test (a sum of everything) fires on every update here, and finds nobody
    diverged; a block tests each number, so its updates stand: the same bits, in whole blocks."""
    arch, config, params, x, y = overflowing_pack()
    runs = []
    for force in (32, 0):
        with switched(blocks, "FORCE", force):
            runs.append(train(np, arch, config, init_state(np, arch, config, params, x, y), x, y, 60))
    assert_same_bits(*runs)
    assert set(runs[0][0].stop_reason.tolist()) == {RUNNING} and np.all(runs[0][0].step == 60)  # nobody stopped
    assert block_runs == [(32, None), (28, None)]


def test_stops_that_keep_firing_shorten_the_blocks(block_runs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that fires at the first update of every block and then finds nothing to do (as the
    loop's overflowing sum above): blocks shrink to 2 updates instead of redoing 32 each time,
    with single updates between them; same bits as one update at a time."""
    arch, config, params, x, y = overflowing_pack()
    original = loop.Trainer.flag_ssr_rows

    def always_first(self: loop.Trainer, rows: Any, flags: Any) -> None:
        original(self, rows, flags)
        flags[0] = True

    monkeypatch.setattr(loop.Trainer, "flag_ssr_rows", always_first)
    runs = []
    for force in (32, 0):
        with switched(blocks, "FORCE", force):
            runs.append(train(np, arch, config, init_state(np, arch, config, params, x, y), x, y, 60))
    assert_same_bits(*runs)
    assert [count for count, _ in block_runs[:3]] == [32, 8, 2]
    assert all(first == 0 for _, first in block_runs) and max(c for c, _ in block_runs[2:]) == 2
    assert len(block_runs) <= 8  # single updates between tries double: 1, 1, 2, 4, 8, 16, 32
