"""Per-network training settings of a pack, as host NumPy arrays of shape (M,)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.engine.architecture import Architecture, check_dtype


def _vector(value: Any, dtype: Any, name: str) -> np.ndarray:
    """A scalar or sequence as a 1-D host array of ``dtype`` (a copy)."""
    try:
        return np.array(value, dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from exc


@dataclass(frozen=True)
class PackConfig:
    """Settings for M networks trained together; every array is (M,) and host NumPy.

    ``trainable`` maps a parameter name to an (M,) bool mask; a name that is absent is
    trainable in every member (so ``trainable={}`` trains everything).
    """

    learning_rate: np.ndarray
    trainable: dict[str, np.ndarray] = field(default_factory=dict)
    max_steps: np.ndarray = None  # type: ignore[assignment]
    min_step_size: np.ndarray = None  # type: ignore[assignment]
    target_ssr: np.ndarray = None  # type: ignore[assignment]
    momentum: np.ndarray | None = None
    batch_size: int | None = None
    batch_seed: int = 0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        lr = _vector(self.learning_rate, np.float64, "learning_rate")
        m = lr.shape[0]
        fill = {"max_steps": (np.int64, 1000), "min_step_size": (np.float64, 0.0),
                "target_ssr": (np.float64, -np.inf)}
        for name, (dtype, default) in fill.items():
            value = getattr(self, name)
            array = np.full(m, default, dtype) if value is None else _vector(value, dtype, name)
            object.__setattr__(self, name, np.broadcast_to(array, (m,)).copy())
        object.__setattr__(self, "learning_rate", lr)
        masks = {k: np.broadcast_to(_vector(v, bool, k), (m,)).copy() for k, v in self.trainable.items()}
        object.__setattr__(self, "trainable", masks)
        if self.momentum is not None:
            mu = np.broadcast_to(_vector(self.momentum, np.float64, "momentum"), (m,)).copy()
            object.__setattr__(self, "momentum", mu)
            if not np.all((mu >= 0) & (mu < 1)):
                raise ValueError("momentum must lie in [0, 1)")
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        if not np.all(np.isfinite(lr) & (lr > 0)):
            raise ValueError("learning_rate must be finite and > 0")
        if np.any(self.max_steps < 0) or np.any(np.isnan(self.min_step_size)):
            raise ValueError("max_steps must be >= 0 and min_step_size a number")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError("batch_size must be >= 1")

    @property
    def size(self) -> int:
        """Number of networks M."""
        return int(self.learning_rate.shape[0])

    def check(self, arch: Architecture) -> None:
        """Raise ValueError when ``trainable`` names a tensor that ``arch`` does not have."""
        known = arch.parameter_shapes()
        unknown = sorted(set(self.trainable) - set(known))
        if unknown:
            raise ValueError(f"trainable: unknown parameters {unknown} for layers {arch.layers}; known: {list(known)}")

    def trainable_mask(self, name: str) -> np.ndarray:
        """(M,) bool: which members train parameter ``name``."""
        return self.trainable.get(name, np.ones(self.size, dtype=bool))

    @classmethod
    def single(
        cls,
        learning_rate: float,
        trainable: dict[str, bool] | None = None,
        max_steps: int = 1000,
        min_step_size: float = 0.0,
        target_ssr: float = -np.inf,
        momentum: float | None = None,
        batch_size: int | None = None,
        batch_seed: int = 0,
        dtype: str = "float64",
    ) -> "PackConfig":
        """A pack of one network from scalars (``trainable`` None = everything trainable)."""
        return cls(
            learning_rate=np.array([learning_rate], dtype=np.float64),
            trainable={k: np.array([v], dtype=bool) for k, v in (trainable or {}).items()},
            max_steps=np.array([max_steps], dtype=np.int64),
            min_step_size=np.array([min_step_size], dtype=np.float64),
            target_ssr=np.array([-np.inf if target_ssr is None else target_ssr]),
            momentum=None if momentum is None else np.array([momentum], dtype=np.float64),
            batch_size=batch_size,
            batch_seed=batch_seed,
            dtype=dtype,
        )

    @staticmethod
    def stack(configs: list["PackConfig"]) -> "PackConfig":
        """Concatenate packs along the model axis (batching, seed and dtype must agree)."""
        first = configs[0]
        for c in configs[1:]:
            if (c.batch_size, c.batch_seed, c.dtype) != (first.batch_size, first.batch_seed, first.dtype):
                raise ValueError("configs differ in batch_size, batch_seed or dtype")
        names = {k for c in configs for k in c.trainable}
        use_momentum = any(c.momentum is not None for c in configs)
        return PackConfig(
            learning_rate=np.concatenate([c.learning_rate for c in configs]),
            trainable={k: np.concatenate([c.trainable_mask(k) for c in configs]) for k in sorted(names)},
            max_steps=np.concatenate([c.max_steps for c in configs]),
            min_step_size=np.concatenate([c.min_step_size for c in configs]),
            target_ssr=np.concatenate([c.target_ssr for c in configs]),
            momentum=np.concatenate([np.zeros(c.size) if c.momentum is None else c.momentum
                                     for c in configs]) if use_momentum else None,
            batch_size=first.batch_size,
            batch_seed=first.batch_seed,
            dtype=first.dtype,
        )
