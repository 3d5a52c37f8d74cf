"""Network shapes: which layers exist, their activations, and deterministic initial values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("identity", "relu", "softplus", "sigmoid", "tanh")
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class Architecture:
    """A fully connected network [n_in, h1, ..., n_out]; hidden layers share one activation."""

    layers: tuple[int, ...]
    activation: str = "relu"
    output_activation: str = "identity"

    def __post_init__(self) -> None:
        layers = tuple(int(n) for n in self.layers)
        object.__setattr__(self, "layers", layers)
        if len(layers) < 2 or min(layers) < 1:
            raise ValueError(f"layers must be >= 2 positive sizes, got {layers}")
        for name in (self.activation, self.output_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")

    @property
    def n_layers(self) -> int:
        """Number of weight layers (len(layers) - 1)."""
        return len(self.layers) - 1

    def layer_activation(self, index: int) -> str:
        """The activation applied after weight layer ``index``."""
        return self.output_activation if index == self.n_layers - 1 else self.activation

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Ordered ``layers.{i}.weight`` (out, in) and ``layers.{i}.bias`` (out,) shapes."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(zip(self.layers, self.layers[1:])):
            shapes[f"layers.{i}.weight"] = (n_out, n_in)
            shapes[f"layers.{i}.bias"] = (n_out,)
        return shapes


def check_dtype(dtype: str) -> str:
    """Normalise a dtype name; only float64 and float32 are supported."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def init_parameters(arch: Architecture, seed: int, dtype: str = "float64") -> dict[str, np.ndarray]:
    """Initial values for one network (host NumPy), a pure function of ``seed``.

    Weights are normal with He scaling for relu (keeps relu activations from dying out) and
    Glorot-like 1/sqrt(fan_in) scaling otherwise; biases start at zero. Drawn in float64 and
    then cast, so float32 starts from the rounded float64 values.
    """
    rng = np.random.default_rng(seed)
    gain = 2.0 if arch.activation == "relu" else 1.0
    out: dict[str, np.ndarray] = {}
    for name, shape in arch.parameter_shapes().items():
        if name.endswith(".weight"):
            values = rng.standard_normal(shape) * math.sqrt(gain / shape[1])
        else:
            values = np.zeros(shape)
        out[name] = values.astype(check_dtype(dtype))
    return out
