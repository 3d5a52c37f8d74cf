"""Exact resume: N updates in one go == k updates, to_arrays/from_arrays, N - k updates."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine import Architecture, PackConfig, TrainState, init_state, train
from tests.engine.helpers import assert_resume_matches, sine_data, stacked

pytestmark = pytest.mark.usefixtures("each_kernels")  # every kernel path installed

SETUPS = {
    "full_batch": dict(momentum=None, batch_size=None),
    "momentum": dict(momentum=np.array([0.9, 0.5, 0.0]), batch_size=None),
    "mini_batch": dict(momentum=np.array([0.8, 0.0, 0.3]), batch_size=7),
}


def config_for(setup: str, max_steps: list[int] | None = None, min_step: float = 0.0) -> PackConfig:
    return PackConfig(learning_rate=np.array([0.01, 0.004, 0.02]), max_steps=max_steps or [50, 50, 50],
                      min_step_size=np.full(3, min_step), target_ssr=np.full(3, -np.inf),
                      batch_seed=3, **SETUPS[setup])


@pytest.mark.parametrize("layers", [(1, 3, 1), (2, 8, 5, 1)])
@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("k", [0, 1, 17, 40])
def test_resume_is_bit_identical(layers: tuple, setup: str, k: int) -> None:
    arch = Architecture(layers, "tanh")
    x, y = sine_data(24, layers[0], 1)
    config = config_for(setup, max_steps=[50, 33, 50])
    state0 = init_state(np, arch, config, stacked(arch, [4, 5, 6]), x, y)
    whole, history = train(np, arch, config, state0, x, y, 40)
    first, history_a = train(np, arch, config, state0, x, y, k)
    restored = TrainState.from_arrays(first.to_arrays(), np)
    rest, history_b = train(np, arch, config, restored, x, y, 40 - k)
    assert_resume_matches(whole, history, first.step, history_a, rest, history_b)


def test_round_trip_keeps_dtypes_and_shapes() -> None:
    arch = Architecture((2, 3, 1), "relu")
    x, y = sine_data(10, 2, 1)
    for dtype in ("float64", "float32"):
        config = PackConfig(learning_rate=np.full(2, 0.01), max_steps=[5, 5], min_step_size=[0, 0],
                            target_ssr=[-np.inf] * 2, momentum=[0.5, 0.5], dtype=dtype)
        state, _ = train(np, arch, config, init_state(np, arch, config, stacked(arch, [0, 1]), x, y), x, y, 3)
        arrays = state.to_arrays()
        expected = {f"{g}/{n}" for g in ("parameters", "velocity") for n in arch.parameter_shapes()}
        assert set(arrays) == expected | {"step", "ssr", "stop_reason"}
        for key, value in arrays.items():
            assert type(value) is np.ndarray and value.dtype != object, key
        for name, shape in arch.parameter_shapes().items():
            assert arrays[f"parameters/{name}"].shape == (2,) + shape
            assert arrays[f"parameters/{name}"].dtype == np.dtype(dtype)
            assert arrays[f"velocity/{name}"].dtype == np.dtype(dtype)
        assert arrays["step"].dtype == np.int64 and arrays["stop_reason"].dtype == np.int8
        assert arrays["ssr"].dtype == np.dtype(dtype) and arrays["ssr"].shape == (2,)
        again = TrainState.from_arrays(arrays, np).to_arrays()
        for key in arrays:
            assert again[key].dtype == arrays[key].dtype
            np.testing.assert_array_equal(again[key], arrays[key])


def test_to_arrays_is_a_copy() -> None:
    arch = Architecture((1, 2, 1), "tanh")
    config = PackConfig.single(0.1)
    x, y = sine_data(5)
    state = init_state(np, arch, config, stacked(arch, [0]), x, y)
    arrays = state.to_arrays()
    arrays["parameters/layers.0.bias"][...] = 99.0
    assert not np.any(state.parameters["layers.0.bias"] == 99.0)


def test_select_and_stack() -> None:
    arch = Architecture((1, 4, 1), "sigmoid")
    x, y = sine_data(12)
    config = PackConfig(learning_rate=np.full(3, 0.05), max_steps=[10, 10, 10], min_step_size=[0] * 3,
                        target_ssr=[-np.inf] * 3)
    state, _ = train(np, arch, config, init_state(np, arch, config, stacked(arch, [0, 1, 2]), x, y), x, y, 4)
    parts = [state.select([0]), state.select([1, 2])]
    assert parts[1].size == 2
    back = TrainState.stack(parts).to_arrays()
    for key, value in state.to_arrays().items():
        np.testing.assert_array_equal(back[key], value)
    assert state.select(np.array([False, True, False])).to_arrays()["step"].tolist() == [4]


def test_mini_batches_need_lockstep() -> None:
    arch = Architecture((1, 2, 1), "tanh")
    x, y = sine_data(12)
    config = config_for("mini_batch")
    state = init_state(np, arch, config, stacked(arch, [0, 1, 2]), x, y)
    arrays = state.to_arrays()
    arrays["step"] = np.array([0, 1, 0])
    with pytest.raises(ValueError, match="one step"):
        train(np, arch, config, TrainState.from_arrays(arrays, np), x, y, 3)


def test_mini_batch_schedule_is_a_function_of_seed_and_epoch() -> None:
    from services.engine.batches import Batches
    from services.engine.training import build

    net = build(np, Architecture((1, 2, 1)), 2, "float64")
    x, y = sine_data(10)
    batches = Batches(net, x, y, 4, seed=9)
    assert batches.count == 3
    epoch1 = np.concatenate([batches.indices(s) for s in (3, 4, 5)])
    np.testing.assert_array_equal(epoch1, np.random.default_rng([9, 1]).permutation(10))
    assert [len(batches.indices(s)) for s in range(3)] == [4, 4, 2]
    np.testing.assert_array_equal(batches.indices(4), Batches(net, x, y, 4, seed=9).indices(4))
