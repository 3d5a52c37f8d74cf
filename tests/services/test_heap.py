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
