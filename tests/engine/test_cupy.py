"""The engine on CuPy (GPU): same results as on NumPy, exact resume, isolation, predict.

Every test here is marked ``gpu`` and runs twice: on CuPy, skipped unless CuPy imports and sees a
CUDA device (run on a GPU machine with ``pytest -q -m gpu tests/engine/test_cupy.py``;
``benchmarks/gpu_check.sh`` does that), and on a CPU stand-in for CuPy (``standin.py``: NumPy
under another name), so that the engine's device paths run in every test run.

GPU transcendentals (exp2, log1p, tanh) and cuBLAS/reduction summation orders differ from
NumPy's in the last bits, so CuPy is compared with NumPy to a tolerance (1e-10 relative to each
tensor's scale for small packs, 1e-9 for wide ones); the learning rates are chosen so that the
dynamics amplify a relative perturbation of the start at most ~200-fold over these runs (checked
on NumPy). Resume on CuPy is compared with an uninterrupted CuPy run bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.engine import STOP_REASONS, Architecture, PackConfig, TrainState, init_state, predict, train
from tests.engine.helpers import SQ_X, SQ_Y, STATQUEST, assert_resume_matches, sine_data, stacked
from tests.engine.standin import STANDIN

pytestmark = pytest.mark.gpu

STATQUEST_ARCH = Architecture((1, 2, 1), "softplus", "identity")


@pytest.fixture(scope="module", params=["cupy", "standin"])
def cp(request: pytest.FixtureRequest) -> Any:
    """The cupy module, or skip: CuPy missing or broken, or no usable CUDA device (no driver, no
    GPU); or the CPU stand-in."""
    if request.param == "standin":
        return STANDIN
    try:
        cupy = pytest.importorskip("cupy", exc_type=ImportError)  # also a CuPy whose CUDA libs fail
    except TypeError:  # pytest < 8.2: no exc_type, ImportError is caught anyway
        cupy = pytest.importorskip("cupy")
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDARuntimeError without a driver; anything else: no usable GPU
        pytest.skip(f"CuPy finds no CUDA device: {type(exc).__name__}: {exc}")
    if count <= 0:
        pytest.skip("CuPy finds no CUDA device")
    return cupy


# ----------------------------------------------------------------------------- helpers


def run_on(xp: Any, arch: Architecture, config: PackConfig, params: dict[str, np.ndarray], x: Any, y: Any,
           updates: int) -> tuple[TrainState, np.ndarray]:
    """init_state + one train call on namespace ``xp`` (parameters host, x/y host or xp)."""
    state = init_state(xp, arch, config, params, x, y)
    return train(xp, arch, config, state, x, y, updates)


def assert_on_device(cp: Any, state: TrainState) -> None:
    """Every array of a CuPy state lives on the GPU."""
    arrays = [*state.parameters.values(), *state.velocity.values(), state.step, state.ssr, state.stop_reason]
    assert all(isinstance(a, cp.ndarray) for a in arrays), [type(a) for a in arrays]


def assert_matches(got: TrainState, got_history: np.ndarray, ref: TrainState, ref_history: np.ndarray,
                   tol: float) -> None:
    """Same steps and stop reasons exactly; floats to ``tol`` relative to each member's scale of
    each tensor (max |value|, at least 1); histories to ``tol`` relative, NaN at the same places."""
    a, b = got.to_arrays(), ref.to_arrays()
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(a["step"], b["step"])
    np.testing.assert_array_equal(a["stop_reason"], b["stop_reason"])
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        if a[key].dtype.kind != "f":
            continue
        for m in range(a[key].shape[0]):
            scale = max(float(np.max(np.abs(b[key][m]), initial=0.0)), 1.0)
            np.testing.assert_allclose(a[key][m], b[key][m], rtol=tol, atol=tol * scale, err_msg=f"{key}[{m}]")
    assert got_history.shape == ref_history.shape and got_history.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got_history), np.isnan(ref_history))
    np.testing.assert_allclose(got_history, ref_history, rtol=tol, atol=0, equal_nan=True)


def mixed_pack(arch: Architecture, members: int, lr: tuple[float, float], momentum: float, steps: int,
               dtype: str = "float64") -> PackConfig:
    """Geometric learning rates, momentum 0..``momentum`` (several members without), one frozen
    first-layer weight in every fifth member, and max_steps from ``steps // 2`` to ``steps``."""
    names = list(arch.parameter_shapes())
    mu = np.linspace(0.0, momentum, members)
    mu[::3] = 0.0
    return PackConfig(
        learning_rate=np.geomspace(lr[0], lr[1], members),
        trainable={names[0]: np.arange(members) % 5 != 4},
        max_steps=np.linspace(steps // 2, steps, members).astype(np.int64),
        momentum=mu,
        dtype=dtype,
    )


def statquest() -> tuple[dict[str, np.ndarray], PackConfig]:
    params = {k: np.array([v], dtype=np.float64) for k, v in STATQUEST.items()}
    trainable = {k: k == "layers.1.bias" for k in params}
    return params, PackConfig.single(0.1, trainable=trainable, min_step_size=0.001)


# ----------------------------------------------------------------------------- tests


def test_statquest_on_cupy(cp: Any) -> None:
    """The worked example: SSR 20.4 at the start, b3 = 2.61 after 9 updates (min step size)."""
    params, config = statquest()
    x, y = cp.asarray(SQ_X), cp.asarray(SQ_Y)  # device data (host data is covered below)
    state = init_state(cp, STATQUEST_ARCH, config, params, x, y)
    assert_on_device(cp, state)
    assert abs(float(state.ssr[0]) - 20.42) < 0.01
    one, _ = train(cp, STATQUEST_ARCH, config, state, x, y, 1)
    assert round(float(one.parameters["layers.1.bias"][0, 0]), 2) == 1.57
    final, history = train(cp, STATQUEST_ARCH, config, state, x, y, 100)
    assert_on_device(cp, final)
    b3 = float(final.parameters["layers.1.bias"][0, 0])
    assert round(b3, 2) == 2.61 and abs(b3 - 2.6085) < 1e-4
    assert STOP_REASONS[int(final.stop_reason[0])] == "min_step_size"
    assert int(final.step[0]) == 9
    assert isinstance(history, np.ndarray) and history.shape == (1, 100)
    assert np.all(np.isfinite(history[0, :9])) and np.all(np.isnan(history[0, 9:]))
    assert np.all(np.diff(history[0, :9]) < 0)
    arrays = final.to_arrays()
    for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight"):
        np.testing.assert_array_equal(arrays[f"parameters/{name}"], params[name])
    ref, ref_history = run_on(np, STATQUEST_ARCH, config, params, SQ_X, SQ_Y, 100)
    assert_matches(final, history, ref, ref_history, 1e-12)


@pytest.mark.parametrize(("layers", "activation", "lr", "momentum"), [
    ((1, 8, 8, 1), "tanh", (1e-3, 1e-2), 0.5),   # model first (64 > 16 weights per layer)
    ((1, 4, 4, 1), "tanh", (1e-3, 5e-3), 0.5),   # model last
])
def test_small_pack_matches_numpy(cp: Any, layers: tuple, activation: str, lr: tuple, momentum: float) -> None:
    arch = Architecture(layers, activation)
    x, y = sine_data(40)
    params = stacked(arch, list(range(16)))
    config = mixed_pack(arch, 16, lr, momentum, 30)
    got, got_history = run_on(cp, arch, config, params, x, y, 30)
    assert_on_device(cp, got)
    ref, ref_history = run_on(np, arch, config, params, x, y, 30)
    assert STOP_REASONS[int(ref.stop_reason[-1])] == "max_steps" and int(ref.step[0]) == 15
    assert_matches(got, got_history, ref, ref_history, 1e-10)


@pytest.mark.parametrize(("members", "points", "lr"), [
    (16, 200, (1e-5, 5e-5)),    # several members per chunk, two member chunks
    (2, 2500, (1e-6, 3e-6)),    # one member per chunk, its points split in two chunks
])
def test_wide_model_first_pack_matches_numpy(cp: Any, members: int, points: int, lr: tuple) -> None:
    arch = Architecture((1, 64, 64, 1), "softplus")
    x, y = sine_data(points)
    params = stacked(arch, list(range(members)))
    config = mixed_pack(arch, members, lr, 0.5, 20)
    got, got_history = run_on(cp, arch, config, params, cp.asarray(x), cp.asarray(y), 20)
    assert_on_device(cp, got)
    ref, ref_history = run_on(np, arch, config, params, x, y, 20)
    assert np.all(np.asarray(ref.stop_reason) == STOP_REASONS.index("max_steps"))
    assert_matches(got, got_history, ref, ref_history, 1e-9)


@pytest.mark.parametrize("layers", [(1, 8, 8, 1), (1, 4, 4, 1)])
def test_float32_pack_stays_float32_and_near_numpy(cp: Any, layers: tuple) -> None:
    arch = Architecture(layers, "tanh")
    x, y = sine_data(40)
    params = stacked(arch, list(range(8)), dtype="float32")
    config = mixed_pack(arch, 8, (1e-3, 5e-3), 0.5, 20, dtype="float32")
    got, got_history = run_on(cp, arch, config, params, x, y, 20)
    assert all(v.dtype == np.float32 for v in got.parameters.values()) and got.ssr.dtype == np.float32
    ref, ref_history = run_on(np, arch, config, params, x, y, 20)
    assert_matches(got, got_history, ref, ref_history, 1e-4)


@pytest.mark.parametrize(("activation", "output"), [
    ("relu", "identity"), ("sigmoid", "sigmoid"), ("softplus", "softplus"), ("tanh", "identity"),
])
def test_every_activation_trains_like_numpy(cp: Any, activation: str, output: str) -> None:
    """Forward and backward of each activation (CuPy's fused kernels, ``cupy_kernels``), hidden
    and as the output's, in model-first packs (one input and output: the first layer's affine
    and activation in one kernel, the last layer's backward with the slope below) and a
    model-last one."""
    for layers in ((2, 8, 8, 2), (1, 8, 8, 1), (1, 3, 1)):
        arch = Architecture(layers, activation, output)
        x, y = sine_data(30, layers[0], layers[-1])
        params = stacked(arch, list(range(5)))
        config = PackConfig(learning_rate=np.geomspace(1e-3, 1e-2, 5), max_steps=np.full(5, 25))
        got, got_history = run_on(cp, arch, config, params, x, y, 25)
        ref, ref_history = run_on(np, arch, config, params, x, y, 25)
        assert_matches(got, got_history, ref, ref_history, 1e-10)


def test_products_straight_between_views_match_numpy(cp: Any) -> None:
    """``cuda_gemm.matmul_into`` on the views a model-first step multiplies: a layer's block as a
    strided view of the flat parameters (transposed), the shared first-layer input, a gradient
    block written in place. On CuPy each is one cuBLAS call (a plan exists for every one)."""
    from services.engine.cuda_gemm import matmul_into, plan

    rng = np.random.default_rng(3)
    host = {"flat": rng.standard_normal((6, 2 + 33 * 16 + 3)), "shared": rng.standard_normal((33, 70)),
            "below": rng.standard_normal((6, 33, 70)), "dz": rng.standard_normal((6, 16, 70))}
    device = {name: cp.asarray(value) for name, value in host.items()}

    def block(t: dict[str, Any]) -> Any:
        return t["flat"][:, 2:2 + 33 * 16].reshape(6, 33, 16)

    cases = [  # (a, b) as views of host or device arrays; None: the product goes into a gradient block
        (lambda t: block(t).swapaxes(1, 2), lambda t: t["shared"], (6, 16, 70)),  # forward, first layer
        (lambda t: block(t).swapaxes(1, 2), lambda t: t["below"], (6, 16, 70)),  # forward
        (lambda t: block(t)[:, :32, :], lambda t: t["dz"], (6, 32, 70)),  # da = W^T dz
        (lambda t: t["shared"], lambda t: t["dz"].swapaxes(1, 2), None),  # [dW|db]^T = [x;1] dz^T
        (lambda t: t["below"], lambda t: t["dz"].swapaxes(1, 2), None),
    ]
    for a, b, shape in cases:
        expected = np.matmul(a(host), b(host))
        grads = {"flat": cp.zeros(host["flat"].shape)}
        out = block(grads) if shape is None else cp.zeros(shape)
        if hasattr(cp, "cuda"):
            assert plan(a(device), b(device), out) is not None
        matmul_into(cp, a(device), b(device), out)
        np.testing.assert_allclose(cp.asnumpy(out), expected, rtol=1e-12, atol=1e-12)
        if shape is None:  # the parameters around the block are untouched
            around = cp.asnumpy(grads["flat"])
            assert not around[:, :2].any() and not around[:, -3:].any()


def test_mini_batches_match_numpy(cp: Any) -> None:
    """Mini-batches: the batch order is drawn on the host, each batch is moved to the device."""
    arch = Architecture((1, 8, 8, 1), "tanh")
    x, y = sine_data(23)
    params = stacked(arch, list(range(6)))
    config = PackConfig(learning_rate=np.geomspace(1e-3, 1e-2, 6), max_steps=np.full(6, 30),
                        momentum=np.array([0.0, 0.5, 0.0, 0.3, 0.5, 0.0]), batch_size=5, batch_seed=7)
    got, got_history = run_on(cp, arch, config, params, cp.asarray(x), cp.asarray(y), 30)
    ref, ref_history = run_on(np, arch, config, params, x, y, 30)
    assert_matches(got, got_history, ref, ref_history, 1e-10)


@pytest.mark.parametrize("batch_size", [None, 7])
@pytest.mark.parametrize("layers", [(1, 3, 1), (1, 8, 8, 1)])
def test_resume_on_cupy_is_bit_identical(cp: Any, layers: tuple, batch_size: int | None) -> None:
    """N updates in one call == k updates, to_arrays (host) / from_arrays (device), N - k more."""
    arch = Architecture(layers, "tanh")
    x, y = sine_data(24)
    config = PackConfig(learning_rate=np.array([0.01, 0.004, 0.02]), max_steps=[40, 23, 40],
                        momentum=np.array([0.9, 0.5, 0.0]), batch_size=batch_size, batch_seed=3)
    state0 = init_state(cp, arch, config, stacked(arch, [4, 5, 6]), x, y)
    whole, history = train(cp, arch, config, state0, x, y, 40)
    k = 17
    first, history_a = train(cp, arch, config, state0, x, y, k)
    saved = first.to_arrays()
    assert all(type(v) is np.ndarray for v in saved.values())
    restored = TrainState.from_arrays(saved, cp)
    assert_on_device(cp, restored)
    rest, history_b = train(cp, arch, config, restored, x, y, 40 - k)
    assert_resume_matches(whole, history, saved["step"], history_a, rest, history_b)


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("layers", [(1, 2, 1), (1, 8, 8, 1)])
def test_divergence_is_isolated_on_cupy(cp: Any, layers: tuple, momentum: bool) -> None:
    """A member with a huge learning rate overflows and stops as ``diverged`` with its last finite
    values; NaN/inf never reach the others, which match the NumPy run."""
    arch = Architecture(layers, "softplus")
    x, y = sine_data(25)
    params = stacked(arch, [0, 1, 2, 3])
    # test_pack's 0.02 makes member 2 of (1, 8, 8, 1) chaotic (it amplifies rounding ~6e5-fold):
    # fine for NumPy against NumPy, too close to the tolerance for CuPy against NumPy
    config = PackConfig(learning_rate=np.array([0.005, 1e6, 0.01, 0.002]), max_steps=np.full(4, 40),
                        momentum=np.full(4, 0.5) if momentum else None)
    got, history = run_on(cp, arch, config, params, x, y, 40)
    arrays = got.to_arrays()
    assert STOP_REASONS[arrays["stop_reason"][1]] == "diverged"
    assert arrays["step"][1] < 40 and np.isfinite(arrays["ssr"][1])
    assert all(np.all(np.isfinite(v)) for v in arrays.values() if v.dtype.kind == "f")
    assert np.all(np.isnan(history[1, arrays["step"][1]:]))
    assert np.all(np.isfinite(history[[0, 2, 3]]))
    for i in (0, 2, 3):
        assert STOP_REASONS[arrays["stop_reason"][i]] == "max_steps" and arrays["step"][i] == 40
    ref, ref_history = run_on(np, arch, config, params, x, y, 40)
    healthy = [0, 2, 3]
    assert_matches(got.select(healthy), history[healthy], ref.select(healthy), ref_history[healthy], 1e-10)
    # the diverged member took a step or two with values up to ~1e42 first: same path, loosely
    assert_matches(got.select([1]), history[[1]], ref.select([1]), ref_history[[1]], 1e-6)


@pytest.mark.parametrize("layers", [(1, 2, 1), (1, 8, 8, 1)])
def test_blocks_on_cupy_give_the_bits_of_one_update_at_a_time(cp: Any, layers: tuple,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU updates run in blocks with no read from the device (``services.engine.blocks``);
    with members diverging, reaching min_step_size and max_steps inside blocks, the result is
    bit-identical to the loop that reads the stop tests after every update."""
    from services.engine import blocks

    arch = Architecture(layers, "softplus")
    x, y = sine_data(25)
    config = PackConfig(learning_rate=np.array([0.005, 1e6, 0.01, 0.002, 0.004]), max_steps=[90, 90, 37, 90, 61],
                        momentum=np.array([0.5, 0.0, 0.9, 0.0, 0.3]), min_step_size=[0, 0, 0, 1e-4, 0])
    params = stacked(arch, [0, 1, 2, 3, 4])
    runs = {}
    for size in (blocks.SIZE, 5, 0):
        monkeypatch.setattr(blocks, "FORCE", size)
        state, history = run_on(cp, arch, config, params, x, y, 90)
        runs[size] = (state.to_arrays(), history)
    assert {STOP_REASONS[r] for r in runs[0][0]["stop_reason"]} >= {"diverged", "max_steps"}
    for size in (blocks.SIZE, 5):
        (got, got_history), (ref, ref_history) = runs[size], runs[0]
        np.testing.assert_array_equal(got_history, ref_history)
        assert got.keys() == ref.keys()
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{key}, blocks of {size}")


def test_blocks_as_cuda_graphs_give_the_bits_of_blocks_kernel_by_kernel(cp: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On CuPy a block runs as one CUDA graph (``services.engine.cuda_graphs``): with a member
    diverging and others reaching max_steps inside blocks, over two ``train`` calls (the second
    may replay graphs kept on the pooled network), the bits equal those of the same blocks run
    kernel by kernel, and of one update at a time; and so do 200 updates with no stop, where
    graphs were captured (a block's second coming) and replayed, and never switched off."""
    from services.engine import blocks, cuda_graphs, training
    from services.engine.backend import is_cupy

    if not is_cupy(cp):
        pytest.skip("CUDA graphs need CuPy on a GPU")
    arch = Architecture((1, 16, 16, 1), "tanh")  # model first
    x, y = sine_data(300)
    config = PackConfig(learning_rate=np.array([3e-5, 1e6, 6e-5, 1.5e-4, 3e-5, 1e-4]),
                        max_steps=[150, 150, 77, 150, 101, 150], momentum=np.array([0.5, 0, 0.9, 0, 0.3, 0]))
    params = stacked(arch, list(range(6)))
    runs = {}
    for mode, enabled, force in (("graphs", True, None), ("kernels", False, None), ("single", False, 0)):
        monkeypatch.setattr(cuda_graphs, "ENABLED", enabled)
        monkeypatch.setattr(blocks, "FORCE", force)
        training._POOL.clear()
        state = init_state(cp, arch, config, params, x, y)
        first, early = train(cp, arch, config, state, x, y, 70)
        second, late = train(cp, arch, config, first, x, y, 80)
        runs[mode] = (second.to_arrays(), np.concatenate([early, late], axis=1))
        long = PackConfig(learning_rate=np.full(6, 3e-5), max_steps=np.full(6, 1000))
        final, history = train(cp, arch, long, init_state(cp, arch, long, params, x, y), x, y, 200)
        runs[f"{mode}, no stop"] = (final.to_arrays(), history)
        if mode == "graphs":
            held = [net.graphs for net in training._POOL.values()]
            assert any(g.captured for g in held) and all(g.off is None for g in held), held
    reasons = {STOP_REASONS[r] for r in runs["single"][0]["stop_reason"]}
    assert reasons == {"diverged", "max_steps"}, reasons
    for mode in ("graphs", "kernels"):
        for run in ("", ", no stop"):
            (got, got_history), (ref, ref_history) = runs[mode + run], runs["single" + run]
            np.testing.assert_array_equal(got_history, ref_history, err_msg=mode + run)
            for key in ref:
                np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{key}, {mode}{run}")


def test_non_finite_start_is_diverged_at_init_on_cupy(cp: Any) -> None:
    arch = Architecture((1, 2, 1), "relu")
    params = stacked(arch, [0, 1])
    params["layers.1.bias"][1, 0] = np.nan
    x, y = sine_data(10)
    config = PackConfig(learning_rate=np.full(2, 0.01), max_steps=np.full(2, 5))
    state = init_state(cp, arch, config, params, x, y)
    assert cp.asnumpy(state.stop_reason).tolist() == [0, 4]
    new, history = train(cp, arch, config, state, x, y, 5)
    assert cp.asnumpy(new.step).tolist() == [5, 0] and np.all(np.isnan(history[1]))
    assert np.all(np.isfinite(history[0]))


@pytest.mark.parametrize(("layers", "activation", "output"), [
    ((1, 2, 1), "softplus", "identity"),
    ((2, 3, 2), "tanh", "sigmoid"),
    ((1, 16, 16, 1), "relu", "identity"),
    ((3, 64, 64, 2), "softplus", "identity"),
])
def test_predict_on_cupy(cp: Any, layers: tuple, activation: str, output: str) -> None:
    arch = Architecture(layers, activation, output)
    x, y = sine_data(3000 if layers[1] == 64 else 30, layers[0], layers[-1])
    params = stacked(arch, [0, 1, 2])
    out = predict(cp, arch, {k: cp.asarray(v) for k, v in params.items()}, cp.asarray(x))
    assert isinstance(out, cp.ndarray) and out.shape == (3, x.shape[0], layers[-1]) and out.dtype == np.float64
    ref = predict(np, arch, params, x)
    np.testing.assert_allclose(cp.asnumpy(out), ref, rtol=1e-12, atol=1e-12)
    alone = predict(cp, arch, {k: v[1:2] for k, v in params.items()}, x)  # host inputs, one member
    np.testing.assert_allclose(cp.asnumpy(alone), ref[1:2], rtol=1e-12, atol=1e-12)
    config = PackConfig(learning_rate=np.full(3, 1e-3))
    ssr = cp.asnumpy(init_state(cp, arch, config, params, x, y).ssr)
    np.testing.assert_allclose(((cp.asnumpy(out) - y) ** 2).sum(axis=(1, 2)), ssr, rtol=1e-12)
