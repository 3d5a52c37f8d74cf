"""The API's processes leave their startup objects out of the garbage collector's walks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_api_app_freezes_what_it_built(tmp_path: Path) -> None:
    """uvicorn imports ``api.main:app`` in each API process: by then the app and every import
    are in the permanent generation, and objects made later are still collected."""
    probe = ("import gc, api.main; frozen = gc.get_freeze_count(); "
             "cycle = []; cycle.append(cycle); del cycle; print(frozen, gc.collect())")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"DESCENT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    frozen, collected = map(int, result.stdout.split())
    assert frozen > 20_000  # FastAPI, pydantic, SQLAlchemy and the app's own objects
    assert collected >= 1  # the cycle made after the freeze


def test_collection_pauses_nest_and_resume_where_they_began() -> None:
    import gc

    from services import heap

    assert gc.isenabled()
    with heap.collection_paused():
        assert not gc.isenabled()
        with heap.collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "an inner pause ended the outer one"
    assert gc.isenabled()
    # Two threads' pauses overlap without nesting: the first to end leaves the other's in force.
    first, second = heap.collection_paused(), heap.collection_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()
    try:
        with heap.collection_paused():
            pass
        assert not gc.isenabled(), "a pause must not enable a collector that was off before it"
    finally:
        gc.enable()


def test_a_pause_ends_when_its_block_raises() -> None:
    import gc

    import pytest

    from services import heap

    with pytest.raises(RuntimeError), heap.collection_paused():
        raise RuntimeError("refused sweep")
    assert gc.isenabled()
