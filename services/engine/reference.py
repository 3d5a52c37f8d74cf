"""Read this first: one training step of a pack, in plain NumPy, in the canonical layout.

A pack is M networks of one architecture trained side by side. Canonical layout, model axis
first: layer i has weight W (M, n_out, n_in) and bias b (M, n_out); activations are (M, P, n)
for P points. The fast paths (``model_last.py``, ``model_first.py``) compute exactly these
numbers, only with preallocated buffers, other memory layouts and fewer passes over memory;
the tests use this file as their oracle.

One step of gradient descent, for every member m at once:
    forward:   a_0 = x;  z_i = a_{i-1} W_i^T + b_i;  a_i = act_i(z_i)   (prediction: a_last)
    SSR:       sum over points and outputs of (a_last - y)^2
    backward:  d = dSSR/da_last = 2 (a_last - y); for each layer from the last:
               dz = d * act_i'(z_i);  dW_i = dz^T a_{i-1};  db_i = sum over points of dz;
               d = dz W_i  (dSSR/da_{i-1}, for the layer below)
    update:    p = p - lr * dSSR/dp   (loop.py adds momentum and the stop rules)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.engine.architecture import Architecture


def activate(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """act(z) and its derivative act'(z), elementwise."""
    if name == "identity":
        return z, np.ones_like(z)
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(z.dtype)
    if name == "tanh":
        a = np.tanh(z)
        return a, 1 - a * a
    sigmoid = 1 / (1 + np.exp(-z))
    if name == "sigmoid":
        return sigmoid, sigmoid * (1 - sigmoid)
    if name == "softplus":
        return np.logaddexp(0, z), sigmoid  # softplus = log(1 + e^z); its derivative is sigmoid
    raise ValueError(f"unknown activation {name!r}")


def forward(arch: Architecture, params: dict[str, Any], x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer (a_i, act_i'(z_i)), each (M, P, n_i); x (P, n_in) is shared by all members."""
    a, layers = x, []
    for i in range(arch.n_layers):
        w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        z = a @ w.swapaxes(1, 2) + b[:, None, :]
        a, slope = activate(arch.layer_activation(i), z)
        layers.append((a, slope))
    return layers


def ssr(arch: Architecture, params: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M,) sum of squared residuals of every member on (x (P, n_in), y (P, n_out))."""
    residual = forward(arch, params, x)[-1][0] - y
    return (residual * residual).sum(axis=(1, 2))


def gradients(arch: Architecture, params: dict[str, Any], x: np.ndarray,
              y: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(M,) SSR and dSSR/dp for every parameter p, shaped like p: (M, *shape)."""
    layers = forward(arch, params, x)
    inputs = [x] + [a for a, _ in layers[:-1]]  # what each layer multiplied its weights with
    residual = layers[-1][0] - y
    d, grads = 2 * residual, {}
    for i in reversed(range(arch.n_layers)):
        dz = d * layers[i][1]
        grads[f"layers.{i}.weight"] = dz.swapaxes(1, 2) @ inputs[i]
        grads[f"layers.{i}.bias"] = dz.sum(axis=1)
        d = dz @ params[f"layers.{i}.weight"]
    return (residual * residual).sum(axis=(1, 2)), grads
