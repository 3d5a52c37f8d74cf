"""Shared builders for the engine tests: small packs, data and solo reruns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from services.engine import Architecture, PackConfig, TrainState, init_parameters, init_state, train

STATQUEST = {
    "layers.0.weight": [[3.34], [-3.53]],
    "layers.0.bias": [-1.43, 0.57],
    "layers.1.weight": [[-1.22, -2.30]],
    "layers.1.bias": [0.0],
}
SQ_X = np.array([[0.0], [0.5], [1.0]])
SQ_Y = np.array([[0.0], [1.0], [0.0]])


def stacked(arch: Architecture, seeds: list[int], dtype: str = "float64") -> dict[str, np.ndarray]:
    """Parameters (M, *shape) of members initialised from ``seeds``."""
    members = [init_parameters(arch, seed=s, dtype=dtype) for s in seeds]
    return {k: np.stack([m[k] for m in members]) for k in members[0]}


def sine_data(points: int = 40, n_in: int = 1, n_out: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x (P, n_in) uniform in [-2, 2]; y (P, n_out) = sin of the sum of x, shifted per output."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(points, n_in))
    y = np.stack([np.sin(x.sum(axis=1) + k) for k in range(n_out)], axis=1)
    return x, y


def member_config(config: PackConfig, i: int) -> PackConfig:
    """Member i of a pack config as a pack of one."""
    return PackConfig(
        learning_rate=config.learning_rate[i:i + 1],
        trainable={k: v[i:i + 1] for k, v in config.trainable.items()},
        max_steps=config.max_steps[i:i + 1],
        min_step_size=config.min_step_size[i:i + 1],
        target_ssr=config.target_ssr[i:i + 1],
        momentum=None if config.momentum is None else config.momentum[i:i + 1],
        batch_size=config.batch_size,
        batch_seed=config.batch_seed,
        dtype=config.dtype,
    )


def run(arch: Architecture, config: PackConfig, params: dict[str, np.ndarray], x: Any, y: Any,
        updates: int, **kw: Any) -> tuple[TrainState, np.ndarray]:
    """init_state + one train call."""
    state = init_state(np, arch, config, params, x, y, **kw)
    return train(np, arch, config, state, x, y, updates, **kw)


def solo_runs(arch: Architecture, config: PackConfig, params: dict[str, np.ndarray], x: Any, y: Any,
              updates: int) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Each member trained alone: (to_arrays of its final state, its history row)."""
    out = []
    for i in range(config.size):
        one = {k: v[i:i + 1] for k, v in params.items()}
        state, hist = run(arch, member_config(config, i), one, x, y, updates)
        out.append((state.to_arrays(), hist[0]))
    return out


def assert_gradient_matches_central_differences(arch: Architecture, loss: Callable[[dict], np.ndarray],
                                                params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
    """Each entry of ``grads`` against (loss(p + h) - loss(p - h)) / 2h, all members at once;
    ``loss`` maps canonical parameters to the (M,) SSR."""
    h = 1e-6
    for name, shape in arch.parameter_shapes().items():
        for entry in np.ndindex(*shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][(slice(None),) + entry] += h
            minus[name][(slice(None),) + entry] -= h
            fd = (loss(plus) - loss(minus)) / (2 * h)
            np.testing.assert_allclose(grads[name][(slice(None),) + entry], fd, rtol=2e-6, atol=2e-6,
                                       err_msg=f"{name}{entry}")


def network_loss(net: Any, x: np.ndarray, y: np.ndarray) -> Callable[[dict], np.ndarray]:
    """A network's SSR as a function of canonical parameters."""
    data = net.data(x, y)
    return lambda params: net.loss(net.layout.views(net.layout.pack(params)), *data)


def assert_resume_matches(whole: TrainState, history: np.ndarray, split_steps: np.ndarray,
                          history_a: np.ndarray, rest: TrainState, history_b: np.ndarray) -> None:
    """Uninterrupted (whole, history) == first part (history_a, ending at split_steps) + rest."""
    a, b = whole.to_arrays(), rest.to_arrays()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    joined = np.full_like(history, np.nan)
    for m, done in enumerate(np.asarray(split_steps, dtype=int)):
        joined[m, :done] = history_a[m, :done]
        joined[m, done:done + history_b.shape[1]] = history_b[m]
    np.testing.assert_array_equal(history, joined)


@contextmanager
def switched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` set to ``value`` for the block (an engine switch such as a fast path's)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def fast_and_slow(arch: Architecture, config: PackConfig, updates: int, fast: Callable[[bool], Any],
                  members: int, chunks: int = 1, points: int = 9) -> tuple[tuple, tuple]:
    """(state, history) of the same pack trained with a fast path on, then off (``fast(on)`` is a
    context that switches it), in ``chunks`` train calls each way (a resume between them)."""
    x, y = sine_data(points, arch.layers[0], arch.layers[-1])
    start = init_state(np, arch, config, stacked(arch, list(range(members)), config.dtype), x, y)
    runs = []
    for on in (True, False):
        with fast(on):
            state, parts = start, []
            for _ in range(chunks):
                state, history = train(np, arch, config, state, x, y, updates // chunks)
                parts.append(history)
        runs.append((state, np.concatenate(parts, axis=1)))
    return runs[0], runs[1]


def assert_same_bits(fast: tuple, slow: tuple) -> None:
    """Two (state, history) results are equal bit for bit."""
    (a, history_a), (b, history_b) = fast, slow
    np.testing.assert_array_equal(history_a, history_b)
    np.testing.assert_array_equal(a.step, b.step)
    np.testing.assert_array_equal(a.stop_reason, b.stop_reason)
    np.testing.assert_array_equal(a.ssr, b.ssr)
    for name in a.parameters:
        np.testing.assert_array_equal(a.parameters[name], b.parameters[name])
        np.testing.assert_array_equal(a.velocity[name], b.velocity[name])


def reasons(run: tuple) -> set[int]:
    """The stop reasons of a (state, history) result."""
    return set(run[0].stop_reason.tolist())
