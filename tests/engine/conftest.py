"""Fixtures of the engine tests: run a test once per activation-kernel path installed here."""

from __future__ import annotations

import importlib

import pytest

from services.engine import backend, training


def _fused_wide() -> bool:
    try:
        importlib.import_module("services.engine.numba_wide")
    except ImportError:
        return False
    return True


NUMBA = backend.load_numba_kernels() is not None
# "numba-layers": the numba kernels with wide networks run layer by layer (``WideNetwork``),
# the path where NumPy's BLAS is not one ``numba_wide`` can call.
KERNELS = ["numpy"] + (["numba"] if NUMBA else []) + (["numba-layers"] if NUMBA and _fused_wide() else [])


@pytest.fixture(params=KERNELS)
def each_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pin what ``kernels="auto"`` means to each installed path in turn (numpy, numba, and
    numba without the fused wide network)."""
    name = "numba" if request.param == "numba-layers" else request.param
    monkeypatch.setattr(backend, "AUTO_KERNELS", name)
    monkeypatch.setattr(training, "FUSED_WIDE", request.param != "numba-layers")
    training._POOL.clear()  # no network built the other way
    return name
