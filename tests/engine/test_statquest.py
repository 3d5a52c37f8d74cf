"""The StatQuest example: only the output bias b3 trains, stopped by the min step size."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine import STOP_REASONS, Architecture, PackConfig, init_state, predict, train
from services.engine.training import build
from tests.engine.helpers import SQ_X, SQ_Y, STATQUEST

pytestmark = pytest.mark.usefixtures("each_kernels")  # every kernel path installed

ARCH = Architecture((1, 2, 1), "softplus", "identity")


def statquest() -> tuple[dict, PackConfig]:
    params = {k: np.array([v], dtype=np.float64) for k, v in STATQUEST.items()}
    trainable = {k: k == "layers.1.bias" for k in params}
    return params, PackConfig.single(0.1, trainable=trainable, min_step_size=0.001)


def test_initial_ssr() -> None:
    params, config = statquest()
    state = init_state(np, ARCH, config, params, SQ_X, SQ_Y)
    assert round(float(state.ssr[0]), 1) == 20.4
    assert abs(float(state.ssr[0]) - 20.42) < 0.01
    assert int(state.stop_reason[0]) == 0 and int(state.step[0]) == 0


def test_gradient_of_output_bias() -> None:
    params, _ = statquest()
    net = build(np, ARCH, 1, "float64")
    grad = net.layout.empty()
    net.loss_and_grad(net.layout.views(net.layout.pack(params)), *net.data(SQ_X, SQ_Y), net.layout.views(grad))
    assert round(float(net.layout.unpack(grad)["layers.1.bias"][0, 0]), 1) == -15.7


def test_first_step_and_stop() -> None:
    params, config = statquest()
    state = init_state(np, ARCH, config, params, SQ_X, SQ_Y)
    one, _ = train(np, ARCH, config, state, SQ_X, SQ_Y, 1)
    assert round(float(one.parameters["layers.1.bias"][0, 0]), 2) == 1.57
    final, history = train(np, ARCH, config, state, SQ_X, SQ_Y, 100)
    b3 = float(final.parameters["layers.1.bias"][0, 0])
    assert round(b3, 2) == 2.61 and abs(b3 - 2.6085) < 1e-4
    assert STOP_REASONS[int(final.stop_reason[0])] == "min_step_size"
    assert int(final.step[0]) == 9
    assert np.all(np.isfinite(history[0, :9])) and np.all(np.isnan(history[0, 9:]))
    assert np.all(np.diff(history[0, :9]) < 0)
    assert float(final.ssr[0]) == history[0, 8]
    for name in ("layers.0.weight", "layers.0.bias", "layers.1.weight"):
        np.testing.assert_array_equal(final.parameters[name], params[name])


def test_stopped_network_does_not_move_again() -> None:
    params, config = statquest()
    final, _ = train(np, ARCH, config, init_state(np, ARCH, config, params, SQ_X, SQ_Y), SQ_X, SQ_Y, 100)
    again, history = train(np, ARCH, config, final, SQ_X, SQ_Y, 10)
    assert np.all(np.isnan(history))
    for name in params:
        np.testing.assert_array_equal(again.parameters[name], final.parameters[name])
    assert int(again.step[0]) == 9


def test_predict_matches_ssr() -> None:
    params, config = statquest()
    state = init_state(np, ARCH, config, params, SQ_X, SQ_Y)
    pred = predict(np, ARCH, state.parameters, SQ_X)
    assert pred.shape == (1, 3, 1)
    assert abs(float(((pred[0] - SQ_Y) ** 2).sum()) - float(state.ssr[0])) < 1e-12
