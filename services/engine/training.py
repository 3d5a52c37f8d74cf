"""The public entry points: ``init_state``, ``train`` and ``predict``.

A pack is one array program: all members' parameters sit in one flat buffer (see layouts), a
step is a fixed sequence of whole-pack array ops, and stop rules act through masks (see stops).
Parameters are double-buffered: an update writes the new values into the second buffer, so the
previous ones are still there when a member diverges and must be restored.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

from services.engine.architecture import Architecture, check_dtype
from services.engine.backend import blas_threads, kernels_for, to_host
from services.engine.config import PackConfig
from services.engine.layouts import ModelLast, layout_for, prefers_model_last
from services.engine.loop import Trainer
from services.engine.model_first import WideNetwork
from services.engine.model_last import TinyNetwork
from services.engine.network import Network
from services.engine.state import TrainState
from services.engine.stops import initial_reasons


# Whether wide networks with the numba kernels take a chunk's whole step in one compiled call
# (``numba_wide``); tests switch it off to compare the two.
FUSED_WIDE = True


def build(xp: Any, arch: Architecture, members: int, dtype: str, kernels: str = "auto") -> Network:
    """Layout, activation kernels and network for a pack (see ``kernels_for``)."""
    layout = layout_for(xp, arch, members, check_dtype(dtype))
    name, activation_kernels = kernels_for(xp, kernels)
    if not isinstance(layout, ModelLast):
        if name == "numba" and FUSED_WIDE and (fused := _fused_wide()) is not None:
            return fused(xp, arch, layout, activation_kernels)
        return WideNetwork(xp, arch, layout, activation_kernels)
    if name == "numba":  # tiny layers: the whole step compiled (numba_tiny)
        return importlib.import_module("services.engine.numba_tiny").FusedTinyNetwork(
            xp, arch, layout, activation_kernels)
    return TinyNetwork(xp, arch, layout, activation_kernels)


@lru_cache(maxsize=1)
def _fused_wide() -> type[Network] | None:
    """``numba_wide.FusedWideNetwork``, or None where it cannot find NumPy's BLAS (asked once)."""
    try:
        return importlib.import_module("services.engine.numba_wide").FusedWideNetwork
    except ImportError:
        return None


# Networks (with their buffers) kept between calls: a worker trains a pack in many short
# ``train`` calls, and building the network and its buffers each time is a large part of a
# short call. A network in use is taken out of the pool, so two threads never share buffers.
_POOL: dict[tuple, Network] = {}
POOL_SIZE = 4


@contextmanager
def network(xp: Any, arch: Architecture, members: int, dtype: str, kernels: str) -> Iterator[Network]:
    """A network from the pool (or a new one), given back to the pool afterwards."""
    key = (xp.__name__, arch, members, check_dtype(dtype), kernels_for(xp, kernels)[0])
    net = _POOL.pop(key, None) or build(xp, arch, members, dtype, kernels)
    yield net
    _POOL[key] = net
    while len(_POOL) > POOL_SIZE:
        _POOL.pop(next(iter(_POOL)), None)


def needs_twin(arch: Architecture, members: int) -> bool:
    """A lone model-last network runs as a pack of two identical members.

    NumPy sums a (..., P, 1) array along P pairwise but a (..., P, M >= 2) one sequentially, so
    without the twin a network alone would round differently from the same network in a pack.
    The twin costs nothing that matters (model last means tiny layers) and makes a pack
    bit-identical to its members' separate runs.
    """
    return members == 1 and prefers_model_last(arch)


def twin(parameters: dict[str, Any], xp: Any) -> dict[str, Any]:
    """(1, *shape) tensors -> (2, *shape), the member repeated."""
    return {k: xp.concatenate([xp.asarray(v)] * 2, axis=0) for k, v in parameters.items()}


def check_parameters(arch: Architecture, parameters: dict[str, Any], members: int) -> None:
    """Every tensor of ``arch`` present with shape (M, *shape)."""
    for name, shape in arch.parameter_shapes().items():
        if name not in parameters:
            raise ValueError(f"missing parameter {name!r}")
        if tuple(parameters[name].shape) != (members,) + shape:
            raise ValueError(f"{name} has shape {tuple(parameters[name].shape)}, expected {(members,) + shape}")


def init_state(xp: Any, arch: Architecture, config: PackConfig, parameters: dict[str, Any],
               x: Any, y: Any, *, kernels: str = "auto") -> TrainState:
    """Step-0 state of a pack: parameters (M, *shape) host or xp, x (P, n_in), y (P, n_out).

    Computes the SSR at the initial parameters and applies the stop rules that need no
    gradient: non-finite SSR or parameters -> diverged, ssr <= target_ssr, max_steps == 0.
    ``kernels``: the activation kernels (``backend.kernels_for``).
    """
    members = config.size
    config.check(arch)
    check_parameters(arch, parameters, members)
    if needs_twin(arch, members):
        state = init_state(xp, arch, PackConfig.stack([config, config]), twin(parameters, xp), x, y,
                           kernels=kernels)
        return state.select([0])
    with network(xp, arch, members, config.dtype, kernels) as net, np.errstate(all="ignore"):
        buf = net.layout.pack(parameters)
        ssr = net.loss(net.layout.views(buf), *net.data(x, y))
        finite = to_host(xp, xp.isfinite(buf).all(axis=net.layout.param_axis))
        params = net.layout.unpack(buf)
    dtype = np.dtype(config.dtype)
    reason = initial_reasons(np.zeros(members, np.int8), to_host(xp, ssr), finite,
                             config.max_steps, config.target_ssr.astype(dtype))
    return TrainState(
        parameters=params,
        velocity={k: xp.zeros_like(v) for k, v in params.items()},
        step=xp.zeros(members, dtype=xp.int64),
        ssr=ssr,
        stop_reason=xp.asarray(reason),
    )


def train(xp: Any, arch: Architecture, config: PackConfig, state: TrainState, x: Any, y: Any,
          max_updates: int, *, kernels: str = "auto") -> tuple[TrainState, np.ndarray]:
    """Run at most ``max_updates`` more updates per running member; stop early when all stop.

    Returns the new state and the host history (M, max_updates) float64: row m holds the SSR
    after each of its updates in this call, then NaN. Deterministic: N updates in one call are
    bit-identical to k updates, ``to_arrays``/``from_arrays``, then N - k updates.
    """
    if config.size != state.size:
        raise ValueError(f"config has {config.size} members, state {state.size}")
    config.check(arch)
    check_parameters(arch, state.parameters, state.size)
    if needs_twin(arch, state.size):
        new, history = train(xp, arch, PackConfig.stack([config, config]), TrainState.stack([state, state]),
                             x, y, max_updates, kernels=kernels)
        return new.select([0]), history[:1]
    with network(xp, arch, state.size, config.dtype, kernels) as net:
        limit = net.blas_thread_limit(int(np.shape(x)[0]))
        with np.errstate(all="ignore"), blas_threads(xp, limit):
            return Trainer(xp, net, config, state, x, y).run(int(max_updates))


def predict(xp: Any, arch: Architecture, parameters: dict[str, Any], x: Any, *, kernels: str = "auto") -> Any:
    """Predictions (M, P, n_out) of every member for x (P, n_in); parameters (M, *shape).

    Uses the training code path, so predictions match what the SSR was computed from.
    """
    first = parameters[next(iter(arch.parameter_shapes()))]
    members = int(first.shape[0])
    check_parameters(arch, parameters, members)
    if needs_twin(arch, members):
        return predict(xp, arch, twin(parameters, xp), x, kernels=kernels)[:1]
    dtype = first.dtype.name if first.dtype.name in ("float32", "float64") else "float64"
    y = xp.zeros((np.shape(x)[0], arch.layers[-1]), dtype=dtype)
    with network(xp, arch, members, dtype, kernels) as net, np.errstate(all="ignore"):
        return net.predict(net.layout.views(net.layout.pack(parameters)), net.data(x, y)[0])
