"""Training state of a pack and its exact conversion to plain host arrays (never pickled)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.engine.backend import to_host

STOP_REASONS = ("running", "max_steps", "min_step_size", "target_ssr", "diverged")  # code = index
RUNNING, MAX_STEPS, MIN_STEP_SIZE, TARGET_SSR, DIVERGED = range(len(STOP_REASONS))


def _namespace(array: Any) -> Any:
    """The array module an array belongs to (NumPy for host arrays, else its own module)."""
    if isinstance(array, np.ndarray):
        return np
    return importlib.import_module(type(array).__module__.split(".")[0])


@dataclass(frozen=True)
class TrainState:
    """Everything needed to continue training bit-exactly, model axis first.

    parameters / velocity: name -> (M, *shape) arrays of the compute dtype; step: (M,) int64
    updates applied so far; ssr: (M,) SSR at the current parameters (compute dtype);
    stop_reason: (M,) int8 code into STOP_REASONS (0 = still running).
    """

    parameters: dict[str, Any]
    velocity: dict[str, Any]
    step: Any
    ssr: Any
    stop_reason: Any

    @property
    def size(self) -> int:
        """Number of networks M."""
        return int(self.step.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain host NumPy arrays (dtype and shape kept) under flat string keys."""
        xp = _namespace(self.step)
        out: dict[str, np.ndarray] = {}
        for group, tensors in (("parameters", self.parameters), ("velocity", self.velocity)):
            for name, value in tensors.items():
                out[f"{group}/{name}"] = np.array(to_host(xp, value), copy=True)
        out["step"] = np.array(to_host(xp, self.step), dtype=np.int64, copy=True)
        out["ssr"] = np.array(to_host(xp, self.ssr), copy=True)
        out["stop_reason"] = np.array(to_host(xp, self.stop_reason), dtype=np.int8, copy=True)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], xp: Any) -> "TrainState":
        """Inverse of ``to_arrays``: host arrays -> state on ``xp`` (values copied exactly)."""
        groups: dict[str, dict[str, Any]] = {"parameters": {}, "velocity": {}}
        for key, value in arrays.items():
            group, _, name = key.partition("/")
            if group in groups and name:
                groups[group][name] = xp.array(np.asarray(value), copy=True)
        if not groups["parameters"]:
            raise ValueError("arrays hold no 'parameters/<name>' entries")
        for name, value in groups["parameters"].items():
            groups["velocity"].setdefault(name, xp.zeros_like(value))
        return cls(
            parameters=groups["parameters"],
            velocity=groups["velocity"],
            step=xp.asarray(np.asarray(arrays["step"], dtype=np.int64)),
            ssr=xp.asarray(np.asarray(arrays["ssr"])),
            stop_reason=xp.asarray(np.asarray(arrays["stop_reason"], dtype=np.int8)),
        )

    def select(self, index: Any) -> "TrainState":
        """Sub-pack of the members ``index`` (list of ints, int array, bool mask or slice)."""
        if not isinstance(index, slice):
            index = np.asarray(index)
            index = np.flatnonzero(index) if index.dtype == bool else index.reshape(-1)
            xp = _namespace(self.step)
            index = index if xp is np else xp.asarray(index)
        pick = lambda a: a[index]  # noqa: E731 - tiny local helper
        return TrainState(
            parameters={k: pick(v) for k, v in self.parameters.items()},
            velocity={k: pick(v) for k, v in self.velocity.items()},
            step=pick(self.step),
            ssr=pick(self.ssr),
            stop_reason=pick(self.stop_reason),
        )

    @staticmethod
    def stack(states: list["TrainState"]) -> "TrainState":
        """Concatenate packs along the model axis (same parameter names and dtypes)."""
        if not states:
            raise ValueError("nothing to stack")
        xp = _namespace(states[0].step)
        cat = lambda arrays: xp.concatenate(list(arrays), axis=0)  # noqa: E731
        names = list(states[0].parameters)
        return TrainState(
            parameters={k: cat(s.parameters[k] for s in states) for k in names},
            velocity={k: cat(s.velocity[k] for s in states) for k in names},
            step=cat(s.step for s in states),
            ssr=cat(s.ssr for s in states),
            stop_reason=cat(s.stop_reason for s in states),
        )
