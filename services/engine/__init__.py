"""Descent's training engine: pure array computation for packs of small networks.

Arrays in, arrays out, on any array namespace ``xp`` (NumPy on CPU, CuPy on GPU). Imports only
NumPy; CuPy and numexpr are loaded lazily when asked for. No I/O, logging or settings here.

Reading order: ``reference.py`` (one training step in plain NumPy, the tests' oracle), then
``training.py`` (the entry points), ``loop.py`` (the update loop), ``network.py`` (a step in the
internal layouts) and one layout: ``model_last.py`` (tiny layers) or ``model_first.py`` (wide).
"""

from services.engine.architecture import ACTIVATIONS, Architecture, init_parameters
from services.engine.backend import get_namespace, to_host
from services.engine.config import PackConfig
from services.engine.state import STOP_REASONS, TrainState
from services.engine.training import init_state, predict, train

__all__ = [
    "ACTIVATIONS",
    "STOP_REASONS",
    "Architecture",
    "PackConfig",
    "TrainState",
    "get_namespace",
    "init_parameters",
    "init_state",
    "predict",
    "to_host",
    "train",
]
