"""Gradients: the reference against float64 central differences, and every fast path (both
layouts, every kernel path installed) against the reference, for every activation."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from services.engine import ACTIVATIONS, Architecture, reference
from services.engine.layouts import ModelLast, TinyLayer, layout_for, prefers_model_last
from services.engine.model_last import TinyNetwork
from services.engine.training import build
from tests.engine.helpers import assert_gradient_matches_central_differences, network_loss, sine_data

pytestmark = pytest.mark.usefixtures("each_kernels")

# model last (every layer tiny) and model first (a wide layer), shallow and deep
ARCHS = [(1, 2, 1), (2, 3, 2), (3, 2, 4, 2), (3, 6, 5, 2), (2, 9, 1)]
PAIRS = list(itertools.product(ACTIVATIONS, ACTIVATIONS))


def random_pack(layers: tuple, hidden: str, output: str, members: int = 3) -> tuple:
    arch = Architecture(layers, hidden, output)
    rng = np.random.default_rng(zlib.crc32(repr((layers, hidden, output)).encode()))  # stable across runs
    params = {k: rng.normal(0, 0.8, (members,) + s) for k, s in arch.parameter_shapes().items()}
    x, y = sine_data(7, layers[0], layers[-1], seed=1)
    return arch, params, x, y


def loss_and_grad(arch: Architecture, params: dict, x: np.ndarray, y: np.ndarray) -> tuple:
    members = next(iter(params.values())).shape[0]
    net = build(np, arch, members, "float64")
    buf, grad = net.layout.pack(params), net.layout.empty()
    ssr = net.loss_and_grad(net.layout.views(buf), *net.data(x, y), net.layout.views(grad))
    return ssr, net.layout.unpack(grad), net


@pytest.mark.parametrize("layers", ARCHS)
@pytest.mark.parametrize(("hidden", "output"), PAIRS)
def test_reference_matches_central_differences(layers: tuple, hidden: str, output: str) -> None:
    arch, params, x, y = random_pack(layers, hidden, output)
    _, grads = reference.gradients(arch, params, x, y)
    assert_gradient_matches_central_differences(arch, lambda p: reference.ssr(arch, p, x, y), params, grads)


@pytest.mark.parametrize("layers", ARCHS)
@pytest.mark.parametrize(("hidden", "output"), PAIRS)
def test_fast_paths_match_the_reference(layers: tuple, hidden: str, output: str) -> None:
    arch, params, x, y = random_pack(layers, hidden, output)
    ssr, grads, _ = loss_and_grad(arch, params, x, y)
    ref_ssr, ref_grads = reference.gradients(arch, params, x, y)
    np.testing.assert_allclose(ssr, ref_ssr, rtol=1e-13)
    for name, value in ref_grads.items():
        scale = max(float(np.abs(value).max()), 1.0)
        np.testing.assert_allclose(grads[name], value, rtol=1e-12, atol=1e-13 * scale, err_msg=name)


@pytest.mark.parametrize("layers", [(2, 9, 1), (3, 6, 5, 2)])
def test_fast_path_matches_central_differences(layers: tuple) -> None:
    arch, params, x, y = random_pack(layers, "softplus", "tanh")
    _, grads, net = loss_and_grad(arch, params, x, y)
    assert_gradient_matches_central_differences(arch, network_loss(net, x, y), params, grads)


def test_both_layouts_are_exercised() -> None:
    kinds = {prefers_model_last(Architecture(a)) for a in ARCHS}
    assert kinds == {True, False}


@pytest.mark.parametrize(("n_out", "n_in"), [(1, 1), (3, 1), (1, 3), (2, 6), (6, 2), (5, 5), (4, 4)])
def test_model_last_contractions_match_einsum(n_out: int, n_in: int) -> None:
    """Every branch of the model-last affine layer (loops over inputs or outputs, einsum)."""
    rng = np.random.default_rng(n_out * 10 + n_in)
    m, p = 4, 5
    arch = Architecture((n_in, n_out), output_activation="identity")
    net = TinyNetwork(np, arch, ModelLast(np, arch, m, "float64"), None)
    buf = net.workspace(p, m)[0]
    w, b = rng.normal(size=(n_out, n_in, m)), rng.normal(size=(n_out, m))
    a, dz = rng.normal(size=(n_in, p, m)), rng.normal(size=(n_out, p, m))
    z = net.affine(TinyLayer(w, b), a, buf)
    np.testing.assert_allclose(z, np.einsum("oim,ipm->opm", w, a) + b[:, None, :], rtol=1e-13)
    grad, da = TinyLayer(np.empty_like(w), np.empty_like(b)), np.empty_like(a)
    net.affine_backward(TinyLayer(w, b), dz, a, grad, da, buf)
    np.testing.assert_allclose(grad.weight, np.einsum("opm,ipm->oim", dz, a), rtol=1e-13)
    np.testing.assert_allclose(grad.bias, dz.sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(da, np.einsum("oim,opm->ipm", w, dz), rtol=1e-13)


def test_layout_round_trip_is_exact() -> None:
    for layers in ARCHS:
        arch, params, _, _ = random_pack(layers, "tanh", "identity")
        layout = layout_for(np, arch, 3, "float64")
        for name, value in layout.unpack(layout.pack(params)).items():
            np.testing.assert_array_equal(value, params[name])


def test_gradient_is_the_update_direction() -> None:
    """One public train step moves every trainable entry by exactly -lr * grad."""
    from services.engine import PackConfig, init_state, train

    arch = Architecture((2, 3, 1), "tanh")
    rng = np.random.default_rng(5)
    params = {k: rng.normal(size=(2,) + s) for k, s in arch.parameter_shapes().items()}
    x, y = sine_data(9, 2, 1)
    _, grads, _ = loss_and_grad(arch, params, x, y)
    lr = np.array([0.01, 0.02])
    config = PackConfig(learning_rate=lr, max_steps=[5, 5], min_step_size=[0, 0], target_ssr=[-np.inf] * 2)
    state, _ = train(np, arch, config, init_state(np, arch, config, params, x, y), x, y, 1)
    for name in params:
        expected = params[name] - lr.reshape((2,) + (1,) * (params[name].ndim - 1)) * grads[name]
        np.testing.assert_array_equal(state.parameters[name], expected)
