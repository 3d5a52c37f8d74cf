"""Fixtures of the engine tests: run a test once per activation-kernel path installed here."""

from __future__ import annotations

import pytest

from services.engine import backend

KERNELS = ["numpy"] + (["numba"] if backend.load_numba_kernels() is not None else [])


@pytest.fixture(params=KERNELS)
def each_kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pin what ``kernels="auto"`` means to each installed path in turn (numpy, numba)."""
    monkeypatch.setattr(backend, "AUTO_KERNELS", request.param)
    return request.param
