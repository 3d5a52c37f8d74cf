"""Chunked passes (members, or points of a big member, at a time) change nothing that matters."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine import Architecture, PackConfig, TrainState, init_state, train
from services.engine import chunks
from services.engine.layouts import layout_for
from services.engine.training import build
from tests.engine.helpers import (
    assert_gradient_matches_central_differences, network_loss, run, sine_data, solo_runs, stacked,
)

pytestmark = pytest.mark.usefixtures("each_kernels")  # every kernel path installed

ARCH = Architecture((2, 6, 5, 1), "softplus")  # model first


# Chunk plans by the settings that make them, for ARCH on 37 points and 5 members.
PLANS = {
    "point chunks": {"CHUNK_BYTES": 500},  # 5 single members x 8 point chunks
    "member chunks": {"CHUNK_BYTES": 8000},  # members on all points
    # products held small (as W4's): 3 chunks of up to 2 members x 4 point chunks...
    "member and point chunks": {"SMALL_PRODUCTS": True, "SMALL_PRODUCT_MACS": 350, "MIN_SMALL_POINTS": 1,
                                "CHUNK_BYTES": 2000},
    # ...or one chunk of all members x 4 point chunks (its point chunks then run in parallel)
    "point chunks of all members": {"SMALL_PRODUCTS": True, "SMALL_PRODUCT_MACS": 350, "MIN_SMALL_POINTS": 1},
}


@pytest.fixture(params=list(PLANS))
def plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in PLANS[request.param].items():
        monkeypatch.setattr(chunks, name, value)
    return request.param


def config(members: int) -> PackConfig:
    return PackConfig(learning_rate=np.linspace(0.002, 0.01, members), max_steps=np.full(members, 30),
                      min_step_size=np.zeros(members), target_ssr=np.full(members, -np.inf),
                      momentum=np.full(members, 0.5))


@pytest.mark.parametrize("chunk_bytes", [1, 2000, 10000])
def test_plans_cover_everything(monkeypatch: pytest.MonkeyPatch, chunk_bytes: int) -> None:
    monkeypatch.setattr(chunks, "CHUNK_BYTES", chunk_bytes)
    net = build(np, ARCH, 5, "float64")
    members, points = chunks.plan_chunks(ARCH, net.layout, 37)
    assert [m for r in members for m in range(*r)] == list(range(5))
    assert [p for r in points for p in range(*r)] == list(range(37))
    assert len(members) > 1 or len(points) > 1


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_chunked_pass_matches_whole(monkeypatch: pytest.MonkeyPatch, plan_name: str) -> None:
    x, y = sine_data(37, 2, 1)
    params = stacked(ARCH, [0, 1, 2, 3, 4])
    whole_state, whole_history = run(ARCH, config(5), params, x, y, 30)
    for name, value in PLANS[plan_name].items():
        monkeypatch.setattr(chunks, name, value)
    state, history = run(ARCH, config(5), params, x, y, 30)
    member_chunks_only = len(chunks.plan_chunks(ARCH, build(np, ARCH, 5, "float64").layout, 37)[1]) == 1
    a, b = whole_state.to_arrays(), state.to_arrays()
    for key in a:
        if member_chunks_only:  # same sums per member: bit-identical
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
        else:  # gradients summed chunk by chunk: equal to rounding
            np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-14, err_msg=key)
    np.testing.assert_allclose(history, whole_history, rtol=1e-12)


def test_chunked_pack_equals_separate_runs_and_resumes(plan: str) -> None:
    x, y = sine_data(37, 2, 1)
    params = stacked(ARCH, [5, 6, 7])
    state, history = run(ARCH, config(3), params, x, y, 30)
    pack = state.to_arrays()
    for i, (solo, solo_history) in enumerate(solo_runs(ARCH, config(3), params, x, y, 30)):
        for key, value in solo.items():
            np.testing.assert_array_equal(pack[key][i], value[0], err_msg=key)
        np.testing.assert_array_equal(history[i], solo_history)
    first, _ = train(np, ARCH, config(3), init_state(np, ARCH, config(3), params, x, y), x, y, 11)
    rest, _ = train(np, ARCH, config(3), TrainState.from_arrays(first.to_arrays(), np), x, y, 19)
    for key, value in rest.to_arrays().items():
        np.testing.assert_array_equal(value, pack[key], err_msg=key)


def test_chunked_gradient_matches_central_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 500)
    rng = np.random.default_rng(3)
    params = {k: rng.normal(0, 0.7, (2,) + s) for k, s in ARCH.parameter_shapes().items()}
    x, y = sine_data(23, 2, 1)
    net = build(np, ARCH, 2, "float64")
    grad = net.layout.empty()
    net.loss_and_grad(net.layout.views(net.layout.pack(params)), *net.data(x, y), net.layout.views(grad))
    assert_gradient_matches_central_differences(ARCH, network_loss(net, x, y), params, net.layout.unpack(grad))


def test_chunked_predict_matches_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.engine import predict

    x, _ = sine_data(37, 2, 1)
    params = stacked(ARCH, [0, 1, 2])
    whole = predict(np, ARCH, params, x)
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 500)
    chunked = predict(np, ARCH, params, x)
    assert chunked.shape == (3, 37, 1)
    np.testing.assert_allclose(chunked, whole, rtol=1e-13, atol=1e-15)


def test_blas_thread_limit_is_one_only_for_many_small_products() -> None:
    from services.engine.parallel import cores

    def limit(layers: tuple[int, ...], members: int, points: int, act: str = "tanh") -> int | None:
        return build(np, Architecture(layers, act), members, "float64").blas_thread_limit(points)

    assert limit((1, 32, 32, 1), 64, 1000) == 1          # W4: ~2 MFLOP per product
    assert limit((1, 64, 64, 1), 1, 1000, "softplus") is None  # one chunk of big products: threads
    assert limit((1, 2, 1), 1000, 3, "softplus") is None  # W2: model axis last, no BLAS
    if cores() > 1:  # W3: six point chunks on parallel threads, one core each
        assert limit((1, 64, 64, 1), 1, 10_000, "softplus") == 1


def test_the_blas_cap_holds_only_inside_its_block() -> None:
    from threadpoolctl import threadpool_info

    from services.engine.backend import blas_threads

    def threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = threads()
    with blas_threads(np, 1):
        assert threads() == {1}
    assert threads() == before


def test_threads_change_no_bit(monkeypatch: pytest.MonkeyPatch, plan: str) -> None:
    """The chunks of a pass on 1, 3 or 8 threads: the same numbers, bit for bit (one thread walks
    every chunk; three take member chunks, each with its point chunks, where there are three;
    eight, more than the member chunks, take each member chunk's point chunks as tasks of their
    own, as on a many-core machine)."""
    from services.engine import model_first, parallel, training

    x, y = sine_data(37, 2, 1)
    params = stacked(ARCH, [0, 1, 2, 3, 4])
    pairs = []
    original = model_first.WideNetwork._pairs
    monkeypatch.setattr(model_first.WideNetwork, "_pairs", lambda self, *a: pairs.append(1) or original(self, *a))
    results = []
    for threads in (1, 3, 8):
        monkeypatch.setattr(parallel, "cores", lambda threads=threads: threads)
        training._POOL.clear()
        state, history = run(ARCH, config(5), params, x, y, 30)
        results.append((state.to_arrays(), history))
    (a, ha), *others = results
    for b, hb in others:
        for key in a:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
        np.testing.assert_array_equal(hb, ha)
    if plan != "member chunks":  # point chunks on more threads than member chunks: the pairs ran
        assert pairs
    training._POOL.clear()


def test_networks_are_reused_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker trains in many short calls: the network and its buffers are built once."""
    from services.engine import training

    built = []
    original = training.build
    monkeypatch.setattr(training, "build", lambda *a, **k: built.append(a) or original(*a, **k))
    training._POOL.clear()
    x, y = sine_data(37, 2, 1)
    state = init_state(np, ARCH, config(3), stacked(ARCH, [0, 1, 2]), x, y)
    for _ in range(4):
        state, _ = train(np, ARCH, config(3), state, x, y, 5)
    assert len(built) == 1


def test_point_chunks_come_in_even_numbers() -> None:
    """Two cores finish a pass together (W3: 10 MB of activations in 2 MiB chunks: 6, not 5)."""
    arch = Architecture((1, 64, 64, 1), "softplus")
    for points in (10_000, 3_000, 25_001):
        point_ranges = chunks.plan_chunks(arch, layout_for(np, arch, 1, "float64"), points)[1]
        assert len(point_ranges) % 2 == 0, (points, point_ranges)


def test_plans_take_the_members_and_points_they_say() -> None:
    layout = build(np, ARCH, 5, "float64").layout
    expected = {"point chunks": (5, 8), "member chunks": (3, 1), "member and point chunks": (3, 4),
                "point chunks of all members": (1, 4)}
    for name, counts in expected.items():
        with pytest.MonkeyPatch.context() as patch:
            for setting, value in PLANS[name].items():
                patch.setattr(chunks, setting, value)
            members, points = chunks.plan_chunks(ARCH, layout, 37)
        assert (len(members), len(points)) == counts, name


def test_products_stay_small_where_the_blas_has_a_path_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """W4's products (32 x 33 by 33 x P) stay within OpenBLAS's small-matrix path: point chunks
    of at most 946 points, in even numbers, with several members a chunk. W3's (64 x 65) would
    need chunks of 240 points: its plan is left to the cache size, as is every plan on a BLAS
    without that path."""
    w3, w4 = Architecture((1, 64, 64, 1), "softplus"), Architecture((1, 32, 32, 1), "tanh")
    monkeypatch.setattr(chunks, "SMALL_PRODUCTS", True)
    members, points = chunks.plan_chunks(w4, layout_for(np, w4, 64, "float64"), 2000)
    assert len(points) % 2 == 0 and max(b - a for a, b in points) * 32 * 33 <= chunks.SMALL_PRODUCT_MACS
    assert min(b - a for a, b in members) > 1 and members[-1][1] == 64
    assert chunks.small_product_points(w3) is None
    assert len(chunks.plan_chunks(w3, layout_for(np, w3, 1, "float64"), 10_000)[1]) == 6
    monkeypatch.setattr(chunks, "SMALL_PRODUCTS", False)
    assert chunks.plan_chunks(w4, layout_for(np, w4, 64, "float64"), 2000)[1] == [(0, 2000)]


def test_the_blas_says_whether_it_has_a_small_matrix_path() -> None:
    """Read from threadpoolctl: OpenBLAS's AVX-512 targets have the path, its AVX2 ones do not."""
    import subprocess
    import sys

    from threadpoolctl import threadpool_info

    from services.engine.backend import SMALL_PRODUCT_TARGETS, blas_has_small_products

    targets = {str(pool.get("architecture")).lower() for pool in threadpool_info() if pool["internal_api"] == "openblas"}
    assert blas_has_small_products() == bool(targets & SMALL_PRODUCT_TARGETS)
    code = "from services.engine.backend import blas_has_small_products as f; print(f())"
    env = {**__import__("os").environ, "OPENBLAS_CORETYPE": "Haswell"}
    answer = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False"
