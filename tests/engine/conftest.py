"""Fixtures of the engine tests: run a test once per activation-kernel path installed here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.engine import backend, training

NUMBA = backend.load_numba_kernels() is not None
# "numba-layers": the numba kernels with wide networks run layer by layer (``WideNetwork``),
# the path where NumPy's BLAS is not one ``numba_wide`` can call.
KERNELS = ["numpy"] + (["numba"] if NUMBA else []) + (["numba-layers"] if NUMBA and training._fused_wide() else [])


@pytest.fixture(params=KERNELS)
def each_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Pin what ``kernels="auto"`` means to each installed path in turn (numpy, numba, and
    numba without the fused wide network); no network built one way is reused the other."""
    name = "numba" if request.param == "numba-layers" else request.param
    monkeypatch.setattr(backend, "AUTO_KERNELS", name)
    monkeypatch.setattr(training, "FUSED_WIDE", request.param != "numba-layers")
    training._POOL.clear()
    yield name
    training._POOL.clear()
