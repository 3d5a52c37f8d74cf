"""The metric files' folder a process makes for itself is removed when that process exits, and
not when a child forked from it does (a prefork pool's children share the folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import os, sys
from pathlib import Path
from services.metrics_dir import ensure
path = ensure({})
print(path, flush=True)
child = os.fork()
if child == 0:
    sys.exit(0)  # a normal exit runs the atexit hooks it inherited
os.waitpid(child, 0)
print(Path(path).is_dir(), flush=True)
"""


def test_the_creator_removes_its_folder_at_exit_and_a_forked_child_does_not() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    path, after_child = done.stdout.split()
    assert Path(path).name.startswith("descent-metrics-")
    assert after_child == "True", "a forked child's exit removed the shared folder"
    assert not Path(path).exists(), "the creator left its folder behind"
