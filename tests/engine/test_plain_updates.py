"""The tiny network's compiled loop of updates (``numba_tiny.plain_updates``) gives the bits of
the one-update-at-a-time loop, whatever stops members on the way (skipped without numba)."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine import Architecture, PackConfig, loop
from services.engine.state import DIVERGED, MAX_STEPS, MIN_STEP_SIZE, TARGET_SSR
from tests.engine.helpers import assert_same_bits, fast_and_slow, reasons, switched

pytest.importorskip("services.engine.numba_tiny", exc_type=ImportError)
pytestmark = pytest.mark.usefixtures("only_numba")

M = 12
STATQUEST = Architecture((1, 2, 1), "softplus")


@pytest.fixture
def only_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.engine import backend

    monkeypatch.setattr(backend, "AUTO_KERNELS", "numba")


def both_ways(arch: Architecture, config: PackConfig, updates: int, chunks: int = 1) -> tuple[tuple, tuple]:
    """(state, history) trained with the compiled loop, then one update at a time."""
    return fast_and_slow(arch, config, updates, lambda on: switched(loop, "PLAIN_UPDATES", on), M, chunks)


@pytest.mark.parametrize("chunks", [1, 4])
def test_members_stopping_at_max_steps_and_diverging(chunks: int) -> None:
    config = PackConfig(learning_rate=np.geomspace(0.01, 500, M), max_steps=np.arange(M) * 37 + 3)
    fast, slow = both_ways(STATQUEST, config, 400, chunks)
    assert {MAX_STEPS, DIVERGED} <= reasons(slow)
    assert_same_bits(fast, slow)


def test_members_reaching_their_target() -> None:
    free = PackConfig(learning_rate=np.full(M, 0.01))
    (_, history), _ = both_ways(STATQUEST, free, 300)
    config = PackConfig(learning_rate=np.full(M, 0.01), target_ssr=history[np.arange(M), np.arange(M) * 20 + 5])
    fast, slow = both_ways(STATQUEST, config, 300)
    assert reasons(slow) == {TARGET_SSR}
    np.testing.assert_array_equal(slow[0].step, np.arange(M) * 20 + 6)
    assert_same_bits(fast, slow)


def test_members_stopping_at_min_step_size() -> None:
    config = PackConfig(learning_rate=np.full(M, 0.01), min_step_size=np.geomspace(1e-4, 1e-2, M))
    fast, slow = both_ways(STATQUEST, config, 600)
    assert (slow[0].stop_reason == MIN_STEP_SIZE).sum() >= M // 2
    assert_same_bits(fast, slow)


@pytest.mark.parametrize("chunks", [1, 3])
def test_momentum_and_min_step_size(chunks: int) -> None:
    config = PackConfig(learning_rate=np.geomspace(0.001, 0.5, M), momentum=np.linspace(0, 0.9, M),
                        min_step_size=np.geomspace(1e-6, 1e-3, M), max_steps=np.arange(M) * 50 + 7)
    fast, slow = both_ways(STATQUEST, config, 600, chunks)
    assert {MAX_STEPS, MIN_STEP_SIZE} <= reasons(slow)
    assert_same_bits(fast, slow)


def test_momentum_diverging() -> None:
    config = PackConfig(learning_rate=np.geomspace(0.01, 50, M), momentum=np.linspace(0, 0.95, M))
    fast, slow = both_ways(STATQUEST, config, 300)
    assert DIVERGED in reasons(slow)
    assert_same_bits(fast, slow)


@pytest.mark.parametrize(("layers", "activation"), [((1, 3, 3, 1), "tanh"), ((2, 4, 2), "relu"), ((1, 1), "identity")])
def test_depths_and_activations(layers: tuple, activation: str) -> None:
    config = PackConfig(learning_rate=np.geomspace(0.001, 0.3, M), max_steps=np.arange(M) * 20 + 1)
    assert_same_bits(*both_ways(Architecture(layers, activation), config, 250))


def test_float32_and_frozen_tensors() -> None:
    config = PackConfig(learning_rate=np.geomspace(0.01, 5, M), dtype="float32",
                        trainable={"layers.0.weight": False, "layers.1.weight": np.arange(M) % 2 == 0})
    fast, slow = both_ways(STATQUEST, config, 200)
    assert fast[0].parameters["layers.0.bias"].dtype == np.float32
    assert_same_bits(fast, slow)


def test_the_compiled_loop_takes_the_plain_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a silent fallback: with no stop in sight, one call takes every update."""
    from services.engine import numba_tiny

    calls = []
    original = numba_tiny.FusedTinyNetwork.plain_updates

    def counted(self, *args):  # noqa: ANN001, ANN202
        calls.append(taken := original(self, *args))
        return taken

    monkeypatch.setattr(numba_tiny.FusedTinyNetwork, "plain_updates", counted)
    both_ways(STATQUEST, PackConfig(learning_rate=np.full(M, 0.01)), 100)
    both_ways(STATQUEST, PackConfig(learning_rate=np.full(M, 0.01), momentum=np.full(M, 0.5),
                                    min_step_size=np.full(M, 1e-12)), 100)
    assert calls == [100, 100]
