"""The pool's parent loads the engine's kernels before it forks (``training.warm_up``), so that
a child's first pack compiles or loads nothing: checked in a fresh process, where numba has
loaded nothing yet, by the signatures of every numba function before and after training packs
as jobs train them (skipped without numba: then there is nothing to load)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json
import numpy as np
from services import training
from services.engine import Architecture, PackConfig, init_parameters, init_state, train

def compiled():
    from services.engine import numba_kernels, numba_tiny
    try:  # where NumPy's BLAS is one it can call
        from services.engine import numba_layers, numba_wide
    except ImportError:
        numba_layers = numba_wide = None
    modules = [m for m in (numba_kernels, numba_tiny, numba_layers, numba_wide) if m is not None]
    return {f"{module.__name__}.{name}": len(getattr(module, name).signatures)
            for module in modules for name in dir(module)
            if hasattr(getattr(module, name), "signatures")}

def pack(layers, activation, dtype, members, points, **config):
    arch = Architecture(layers, activation)
    inits = [init_parameters(arch, seed=m, dtype=dtype) for m in range(members)]
    params = {k: np.stack([p[k] for p in inits]) for k in inits[0]}
    config = PackConfig(learning_rate=np.full(members, 1e-3), dtype=dtype, **config)
    x = np.linspace(-2.0, 2.0, points, dtype=dtype).reshape(-1, 1)
    state = init_state(np, arch, config, params, x, np.cos(x))
    train(np, arch, config, state, x, np.cos(x), 30)

training.warm_up()
before = compiled()
pack((1, 2, 1), "softplus", "float64", 1, 3, min_step_size=np.full(1, 1e-3))  # StatQuest's shape
pack((1, 2, 1), "relu", "float32", 40, 5, momentum=np.full(40, 0.5))
pack((1, 16, 16, 1), "tanh", "float64", 3, 200)
pack((1, 32, 32, 1), "sigmoid", "float32", 5, 100)
pack((1, 24, 1), "tanh", "float64", 1, 50)  # one hidden layer, one member
pack((1, 40, 30, 20, 1), "softplus", "float32", 2, 60)  # three hidden layers
print(json.dumps([before, compiled()]))
"""


def test_after_warm_up_common_packs_compile_nothing() -> None:
    pytest.importorskip("numba")
    out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = json.loads(out.stdout.splitlines()[-1])
    assert sum(before.values()) >= 5, before  # the warm-up did load kernels
    grown = {name: (before.get(name, 0), count) for name, count in after.items() if count != before.get(name, 0)}
    assert not grown, f"compiled after the warm-up: {grown}"


@pytest.mark.parametrize(("backend", "warmed"), [("numpy", True), ("cupy", False)])
def test_the_pool_parent_warms_up_for_numpy_only(backend: str, warmed: bool, tmp_path: Path) -> None:
    """Celery's worker_init hook (it runs in the pool's parent, before any child exists) loads the
    kernels for a NumPy worker, and nothing for a GPU worker (CUDA must not start before a fork)."""
    pytest.importorskip("numba")
    program = ("import sys; from worker import app; app._warm_engine(); "
               "tiny = sys.modules.get('services.engine.numba_tiny'); "
               "print(bool(tiny and tiny.plain_updates.signatures))")
    env = {"PATH": "/usr/bin:/bin", "DESCENT_ENGINE_BACKEND": backend, "DESCENT_HOME": str(tmp_path),
           "DESCENT_DATABASE_URL": f"sqlite:///{tmp_path / 'descent.db'}"}
    out = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(warmed)
