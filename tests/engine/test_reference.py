"""The plain reference (services/engine/reference.py) is the oracle of every fast path: plain
gradient descent with it gives the engine's history and parameters, on both layouts and every
kernel path installed."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine import Architecture, PackConfig, reference
from tests.engine.helpers import run, sine_data, stacked

pytestmark = pytest.mark.usefixtures("each_kernels")


@pytest.mark.parametrize(("layers", "hidden", "output"), [
    ((1, 2, 1), "softplus", "identity"),   # model last
    ((2, 3, 2), "sigmoid", "tanh"),        # model last
    ((1, 8, 6, 1), "tanh", "identity"),    # model first
    ((3, 9, 2), "relu", "softplus"),       # model first
])
def test_engine_follows_the_reference(layers: tuple, hidden: str, output: str) -> None:
    arch = Architecture(layers, hidden, output)
    x, y = sine_data(20, layers[0], layers[-1])
    params = stacked(arch, [0, 1, 2])
    lr = np.array([0.01, 0.003, 0.02])
    steps = 25
    state, history = run(arch, PackConfig(learning_rate=lr, max_steps=np.full(3, steps)), params, x, y, steps)
    p, expected = {k: v.copy() for k, v in params.items()}, []
    for _ in range(steps):
        _, grads = reference.gradients(arch, p, x, y)
        p = {k: v - lr.reshape((3,) + (1,) * (v.ndim - 1)) * grads[k] for k, v in p.items()}
        expected.append(reference.ssr(arch, p, x, y))
    np.testing.assert_allclose(history, np.array(expected).T, rtol=1e-10)
    for name, value in p.items():
        np.testing.assert_allclose(state.parameters[name], value, rtol=1e-10, atol=1e-12, err_msg=name)


def test_reference_statquest_numbers() -> None:
    """The worked example by hand: SSR 20.4, dSSR/db3 = -15.7."""
    from tests.engine.helpers import SQ_X, SQ_Y, STATQUEST

    arch = Architecture((1, 2, 1), "softplus")
    params = {k: np.array([v]) for k, v in STATQUEST.items()}
    ssr, grads = reference.gradients(arch, params, SQ_X, SQ_Y)
    assert round(float(ssr[0]), 1) == 20.4
    assert round(float(grads["layers.1.bias"][0, 0]), 1) == -15.7
