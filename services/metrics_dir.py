"""Where a process's metric files go, decided before prometheus-client is imported.

prometheus-client picks its value store when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR``, so every ``descent`` command calls :func:`ensure` first (this
module must not import it). One folder is shared by the processes whose metrics one endpoint
serves: a Celery worker and its prefork children, uvicorn's API processes, or, under
``descent up``, the whole stack (the API's ``/metrics`` then shows every worker's metrics too).
Files of a past run would be counted again, so a folder is always new or wiped at start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
OWNER = "DESCENT_METRICS_DIR_OWNER"  # the PID of the process that made the folder


def ensure(env: dict[str, str] | None = None) -> Path:
    """Keep the folder a supervisor handed us; else make a new, empty one for this process tree."""
    env = os.environ if env is None else env
    given = env.get(ENV)
    if given and Path(given).is_dir():
        return Path(given)
    path = Path(tempfile.mkdtemp(prefix="descent-metrics-"))
    env[ENV], env[OWNER] = str(path), str(os.getpid())
    atexit.register(_remove, path, os.getpid())
    return path


def remove_at_exit() -> None:
    """For a program that the folder's maker exec'd into (``descent worker`` becomes Celery:
    same PID, but the exec dropped the maker's exit hook): remove the folder at exit as the
    maker would have. A folder a supervisor handed over, or one of another process, is left."""
    given, owner = os.environ.get(ENV), os.environ.get(OWNER)
    if given and owner == str(os.getpid()):
        atexit.register(_remove, Path(given), os.getpid())


def _remove(path: Path, creator: int) -> None:
    """At the creating process's exit, its folder goes (forked children inherit the hook: only
    the creator, the last of its tree to stop, acts)."""
    if os.getpid() == creator:
        shutil.rmtree(path, ignore_errors=True)


def fresh(path: Path, env: dict[str, str] | None = None) -> Path:
    """An emptied folder at ``path`` for a whole stack (``descent up``), set in ``env``."""
    env = os.environ if env is None else env
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    env[ENV] = str(path.absolute())
    return path
