"""Example job specs shared by the demo, the tests and the benchmarks, so they cannot drift apart.

The StatQuest example is Josh Starmer's "Neural Networks Pt. 2: Backpropagation Main Ideas":
a [1, 2, 1] softplus network whose only trainable parameter is the final bias b3. Gradient
descent from b3 = 0 with learning rate 0.1 moves SSR 20.42 -> ~0 and stops (step size below
0.001) at b3 = 2.61 after 9 updates; the frozen weights w1..w4 never move.
"""

from __future__ import annotations

import copy
from typing import Any

_STATQUEST_JOB: dict[str, Any] = {
    "name": "statquest-b3",
    "architecture": {"layers": [1, 2, 1], "activation": "softplus", "output_activation": "identity"},
    "data": {"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [0.0]]},
    "learning_rate": 0.1,
    "init": {
        "parameters": {
            "layers": [
                {"weight": [[3.34], [-3.53]], "bias": [-1.43, 0.57]},
                {"weight": [[-1.22, -2.30]], "bias": [0.0]},
            ]
        }
    },
    "trainable": ["layers.1.bias"],
    "stop": {"max_steps": 1000, "min_step_size": 0.001},
    "checkpoint_every": 100,
    "device": "cpu",
}

# What a correct run produces (the video's numbers).
STATQUEST_B3 = 2.61
STATQUEST_SSR0 = 20.42
STATQUEST_UPDATES = 9
STATQUEST_WEIGHTS = {"w1": 3.34, "w2": -3.53, "w3": -1.22, "w4": -2.30}


def statquest_job(device: str = "cpu") -> dict[str, Any]:
    """A fresh copy of the StatQuest job body (callers may mutate it freely)."""
    job = copy.deepcopy(_STATQUEST_JOB)
    job["device"] = device
    return job


def statquest_named(layers: list[dict[str, Any]]) -> dict[str, float]:
    """Name the StatQuest parameters as the video does, from a ParametersRead's ``layers``."""
    hidden, output = layers
    return {
        "w1": hidden["weight"][0][0],
        "w2": hidden["weight"][1][0],
        "b1": hidden["bias"][0],
        "b2": hidden["bias"][1],
        "w3": output["weight"][0][0],
        "w4": output["weight"][0][1],
        "b3": output["bias"][0],
    }
