"""A pack of M networks gives the same numbers as M separate runs; members never interfere."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine import STOP_REASONS, Architecture, PackConfig, init_state, train
from services.engine.loop import Trainer
from services.engine.training import build
from tests.engine.helpers import run, sine_data, solo_runs, stacked

pytestmark = pytest.mark.usefixtures("each_kernels")  # every kernel path installed

CASES = [  # (layers, activation, output activation): model last and model first layouts
    ((1, 2, 1), "softplus", "identity"),
    ((2, 3, 2), "tanh", "sigmoid"),
    ((1, 8, 6, 1), "relu", "identity"),
    ((3, 5, 4, 1), "sigmoid", "softplus"),
]


def mixed_config(arch: Architecture, batch_size: int | None = None, momentum: bool = True) -> PackConfig:
    """Five members with different lr, momentum, trainable masks and stop rules."""
    names = list(arch.parameter_shapes())
    return PackConfig(
        learning_rate=np.array([0.01, 0.003, 0.02, 0.005, 0.01]),
        trainable={names[0]: np.array([1, 1, 0, 1, 1], bool), names[-1]: np.array([1, 0, 1, 1, 1], bool)},
        max_steps=np.array([60, 25, 60, 60, 40]),
        min_step_size=np.array([0.0, 0.0, 1e-3, 0.0, 0.0]),
        target_ssr=np.array([-np.inf, -np.inf, -np.inf, 4.0, -np.inf]),
        momentum=np.array([0.0, 0.9, 0.5, 0.0, 0.3]) if momentum else None,
        batch_size=batch_size,
        batch_seed=7,
    )


def assert_pack_equals_solo(arch: Architecture, config: PackConfig, x: np.ndarray, y: np.ndarray, updates: int) -> None:
    params = stacked(arch, list(range(config.size)))
    state, history = run(arch, config, params, x, y, updates)
    pack = state.to_arrays()
    for i, (solo, solo_history) in enumerate(solo_runs(arch, config, params, x, y, updates)):
        for key, value in solo.items():
            np.testing.assert_allclose(pack[key][i], value[0], rtol=1e-12, atol=1e-12, err_msg=f"{key}[{i}]")
        np.testing.assert_allclose(history[i], solo_history, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert np.array_equal(np.isnan(history[i]), np.isnan(solo_history))


@pytest.mark.parametrize(("layers", "hidden", "output"), CASES)
def test_pack_equals_separate_runs_full_batch(layers: tuple, hidden: str, output: str) -> None:
    arch = Architecture(layers, hidden, output)
    x, y = sine_data(30, layers[0], layers[-1])
    config = mixed_config(arch)
    assert_pack_equals_solo(arch, config, x, y, 80)


@pytest.mark.parametrize(("layers", "hidden", "output"), CASES[:3])
def test_pack_equals_separate_runs_without_momentum(layers: tuple, hidden: str, output: str) -> None:
    arch = Architecture(layers, hidden, output)
    x, y = sine_data(30, layers[0], layers[-1])
    assert_pack_equals_solo(arch, mixed_config(arch, momentum=False), x, y, 80)


@pytest.mark.parametrize(("layers", "hidden", "output"), CASES[:3])
def test_pack_equals_separate_runs_mini_batches(layers: tuple, hidden: str, output: str) -> None:
    """Mini-batches need lockstep, so member stop rules here are all max_steps-free."""
    arch = Architecture(layers, hidden, output)
    x, y = sine_data(23, layers[0], layers[-1])
    config = mixed_config(arch, batch_size=5)
    assert_pack_equals_solo(arch, config, x, y, 70)


def test_stop_reasons_of_mixed_pack() -> None:
    arch = Architecture((1, 2, 1), "softplus")
    x, y = sine_data(30)
    config = mixed_config(arch)
    state, history = run(arch, config, stacked(arch, range(5)), x, y, 80)
    steps = np.asarray(state.step)
    assert steps[0] == 60 and steps[1] == 25 and steps[4] == 40
    assert STOP_REASONS[int(state.stop_reason[0])] == "max_steps"
    assert all(np.isnan(history[i, steps[i]:]).all() and np.isfinite(history[i, :steps[i]]).all() for i in range(5))


def test_frozen_parameters_stay_put() -> None:
    arch = Architecture((2, 4, 3, 1), "tanh")
    names = list(arch.parameter_shapes())
    x, y = sine_data(20, 2, 1)
    params = stacked(arch, [1, 2, 3])
    frozen = {names[0]: np.array([0, 1, 0], bool), names[3]: np.array([0, 0, 1], bool)}
    config = PackConfig(learning_rate=np.full(3, 0.05), trainable=frozen, max_steps=np.full(3, 30),
                        min_step_size=np.zeros(3), target_ssr=np.full(3, -np.inf), momentum=np.full(3, 0.9))
    state, _ = run(arch, config, params, x, y, 30)
    for name, mask in frozen.items():
        for i in range(3):
            same = np.array_equal(state.parameters[name][i], params[name][i])
            assert same == (not mask[i]), (name, i)
            if not mask[i]:
                assert not np.any(state.velocity[name][i])
    assert not np.array_equal(state.parameters[names[1]][0], params[names[1]][0])


@pytest.mark.parametrize(("dtype", "x", "w0", "rtol"),
                         [("float64", 1e308, 1e-307, 1e-12), ("float32", 3e38, 1e-37, 1e-5)])
@pytest.mark.parametrize("hidden", [1, 17])  # model last, model first
def test_a_frozen_tensor_whose_gradient_overflows_stays_put(hidden: int, dtype: str, x: float, w0: float,
                                                            rtol: float) -> None:
    """Only the output bias trains. The first layer's weights are frozen, and their gradient,
    2 * residual * x, overflows (x near the dtype's largest number): their step is 0, not
    0 * inf = NaN, so the bias trains as it would alone (residual * 0.8 per update at lr 0.1)
    instead of the network stopping as diverged at step 0."""
    arch = Architecture((1, hidden, 1), "identity")
    params = {"layers.0.weight": np.full((2, hidden, 1), w0, dtype),
              "layers.0.bias": np.zeros((2, hidden), dtype),
              "layers.1.weight": np.ones((2, 1, hidden), dtype), "layers.1.bias": np.zeros((2, 1), dtype)}
    trainable = {name: np.full(2, name == "layers.1.bias") for name in arch.parameter_shapes()}
    config = PackConfig(learning_rate=np.full(2, 0.1), trainable=trainable, max_steps=np.full(2, 5),
                        min_step_size=np.array([0.0, 1e-12]), dtype=dtype)  # with and without the min step test
    xs, ys = np.array([[x]], dtype), np.zeros((1, 1), dtype)
    state, history = run(arch, config, params, xs, ys, 5)
    residual0 = hidden * float(np.asarray(w0, dtype) * np.asarray(x, dtype))
    assert [STOP_REASONS[int(r)] for r in state.stop_reason] == ["max_steps"] * 2
    for member in range(2):
        np.testing.assert_allclose(history[member], residual0 ** 2 * 0.64 ** np.arange(1, 6), rtol=rtol)
    np.testing.assert_allclose(state.parameters["layers.1.bias"][:, 0], -residual0 * (1 - 0.8 ** 5), rtol=rtol)
    for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight"):
        np.testing.assert_array_equal(state.parameters[name], params[name])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_min_step_size_too_small_for_the_dtype_still_stops_a_step_of_zero(dtype: str) -> None:
    """Every relu unit is dead at every point, so the trainable first layer's gradient is exactly
    0. A min_step_size of 1e-50 rounds to 0 in float32, which would disable the rule and train
    on to max_steps; the step, 0, is below it in both dtypes: stopped at step 0."""
    arch = Architecture((1, 3, 1), "relu")
    params = {"layers.0.weight": np.array([[[-1.0], [-2.0], [-1.0]]], dtype),
              "layers.0.bias": np.array([[-0.5, -0.1, -3.0]], dtype),
              "layers.1.weight": np.ones((1, 1, 3), dtype), "layers.1.bias": np.zeros((1, 1), dtype)}
    config = PackConfig.single(0.1, trainable={"layers.1.weight": False, "layers.1.bias": False}, max_steps=30,
                               min_step_size=1e-50, dtype=dtype)
    x = np.array([[0.0], [0.5], [1.0]], dtype)
    state, _ = run(arch, config, params, x, np.array([[0.0], [1.0], [0.0]], dtype), 30)
    assert STOP_REASONS[int(state.stop_reason[0])] == "min_step_size"
    assert int(state.step[0]) == 0


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("layers", [(1, 2, 1), (1, 8, 8, 1)])
def test_divergence_is_isolated(layers: tuple, momentum: bool) -> None:
    arch = Architecture(layers, "softplus")
    x, y = sine_data(25)
    params = stacked(arch, [0, 1, 2, 3])
    lr = np.array([0.01, 1e6, 0.02, 0.005])
    config = PackConfig(learning_rate=lr, max_steps=np.full(4, 40), min_step_size=np.zeros(4),
                        target_ssr=np.full(4, -np.inf), momentum=np.full(4, 0.5) if momentum else None)
    state, history = run(arch, config, params, x, y, 40)
    arrays = state.to_arrays()
    assert STOP_REASONS[arrays["stop_reason"][1]] == "diverged"
    assert arrays["step"][1] < 40 and np.isfinite(arrays["ssr"][1])
    assert all(np.all(np.isfinite(v)) for v in arrays.values() if v.dtype.kind == "f")
    assert np.all(np.isnan(history[1, arrays["step"][1]:]))
    if arrays["step"][1] > 0:
        assert arrays["ssr"][1] == history[1, arrays["step"][1] - 1]
    solo = solo_runs(arch, config, params, x, y, 40)
    for i in (0, 2, 3):
        assert arrays["stop_reason"][i] == 1 and arrays["step"][i] == 40
        for key, value in solo[i][0].items():
            np.testing.assert_allclose(arrays[key][i], value[0], rtol=1e-12, atol=1e-13)
    for key, value in solo[1][0].items():  # the diverged member alone ends the same way
        np.testing.assert_array_equal(arrays[key][1], value[0])


def test_non_finite_start_is_diverged_at_init() -> None:
    arch = Architecture((1, 2, 1), "relu")
    params = stacked(arch, [0, 1])
    params["layers.1.bias"][1, 0] = np.nan
    x, y = sine_data(10)
    config = PackConfig(learning_rate=np.full(2, 0.01), max_steps=np.full(2, 5), min_step_size=np.zeros(2),
                        target_ssr=np.full(2, -np.inf))
    state = init_state(np, arch, config, params, x, y)
    assert list(np.asarray(state.stop_reason)) == [0, 4]
    new, history = train(np, arch, config, state, x, y, 5)
    assert list(np.asarray(new.step)) == [5, 0] and np.all(np.isnan(history[1]))


def test_init_state_rules_without_gradient() -> None:
    arch = Architecture((1, 2, 1), "tanh")
    x, y = sine_data(10)
    config = PackConfig(learning_rate=np.full(3, 0.01), max_steps=np.array([0, 5, 0]),
                        min_step_size=np.zeros(3), target_ssr=np.array([-np.inf, 1e9, 1e9]))
    state = init_state(np, arch, config, stacked(arch, [0, 1, 2]), x, y)
    assert [STOP_REASONS[c] for c in np.asarray(state.stop_reason)] == ["max_steps", "target_ssr", "target_ssr"]
    new, history = train(np, arch, config, state, x, y, 3)
    assert np.all(np.isnan(history)) and not np.any(np.asarray(new.step))


def test_target_ssr_stops_when_reached() -> None:
    arch = Architecture((1, 6, 1), "tanh")
    x, y = sine_data(30)
    config = PackConfig.single(0.01, target_ssr=2.0, max_steps=5000)
    state, history = run(arch, config, stacked(arch, [3]), x, y, 5000)
    n = int(state.step[0])
    assert STOP_REASONS[int(state.stop_reason[0])] == "target_ssr"
    assert history[0, n - 1] <= 2.0 < history[0, n - 2]


def test_a_member_stopped_with_nan_costs_no_divergence_test_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that stopped with non-finite values is set aside: the per-step finiteness test
    stays quiet (it used to run the costly divergence path on every step), and the member comes
    back unchanged."""
    from services.engine import loop

    calls = []
    original = loop.Trainer._diverged
    monkeypatch.setattr(loop.Trainer, "_diverged", lambda self, it, ssr: calls.append(it) or original(self, it, ssr))
    for layers in [(1, 2, 1), (1, 8, 8, 1)]:
        arch = Architecture(layers, "tanh")
        params = stacked(arch, [0, 1, 2])
        params["layers.0.weight"][1] = np.nan
        x, y = sine_data(10)
        config = PackConfig(learning_rate=np.full(3, 0.01), max_steps=np.full(3, 30), momentum=np.full(3, 0.5))
        state = init_state(np, arch, config, params, x, y)
        new, history = train(np, arch, config, state, x, y, 30)
        assert calls == [] and list(np.asarray(new.step)) == [30, 0, 30]
        assert np.isnan(new.parameters["layers.0.weight"][1]).all()
        for name in params:
            np.testing.assert_array_equal(new.parameters[name][1], params[name][1])
        healthy = run(arch, PackConfig(learning_rate=np.full(2, 0.01), max_steps=np.full(2, 30),
                                       momentum=np.full(2, 0.5)), {k: v[[0, 2]] for k, v in params.items()}, x, y, 30)
        np.testing.assert_array_equal(history[[0, 2]], healthy[1])


def test_trainable_names_must_exist() -> None:
    arch = Architecture((1, 2, 1), "tanh")
    x, y = sine_data(5)
    config = PackConfig.single(0.1, trainable={"layers.1.bias": True, "layers.3.weight": False})
    with pytest.raises(ValueError, match="layers.3.weight"):
        init_state(np, arch, config, stacked(arch, [0]), x, y)
    good = PackConfig.single(0.1, trainable={"layers.1.bias": True})
    state = init_state(np, arch, good, stacked(arch, [0]), x, y)
    with pytest.raises(ValueError, match="unknown parameters"):
        train(np, arch, config, state, x, y, 1)
    with pytest.raises(ValueError, match="layers.3.weight"):  # a Trainer built by hand checks too
        Trainer(np, build(np, arch, 1, "float64"), config, state, x, y)
