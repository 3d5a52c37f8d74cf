"""Long-lived objects out of the cyclic garbage collector's sight.

Why: every Descent process imports FastAPI, pydantic, SQLAlchemy, Celery and NumPy before it
does any work, some 120,000 objects that live as long as the process. Each time the collector
reaches its oldest generation it walks all of them again, and a submit or a pack allocates
enough to get there often: in the API that was a tenth of a submit's CPU (an in-process probe:
0.29 -> 0.26 ms a POST, Zen 5; benchmarks/RESULTS.md, eighth session). ``gc.freeze()`` moves
what exists now to a permanent generation that collections skip; objects made later are
collected as before. Python's documentation recommends it for forking servers too: fewer
copy-on-write faults in the children.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def freeze() -> None:
    """Call once a process has imported and built what it keeps (its app, engine, tasks)."""
    gc.collect()  # what is garbage now must not be frozen with the rest
    gc.freeze()


_pauses = {"depth": 0, "was_enabled": True}
_pausing = threading.Lock()


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic collection while a large batch of objects that are not garbage is built.

    Why: a 10,000-member sweep builds some 300,000 containers (member documents, validated
    specs, rows) that all live until its commit; the collector, triggered by those very
    allocations, walked the growing heap again and again: a quarter of the submit's time
    (in-process, Zen 4: 1.3-1.55 -> 0.9-1.15 s; benchmarks/RESULTS.md, eleventh session). Nothing
    is lost: collection resumes when the last pause (nested, or another thread's) ends. The pause
    is process-wide, so keep it to the building: never across a wait (for a lock, the network)."""
    with _pausing:
        if _pauses["depth"] == 0:
            _pauses["was_enabled"] = gc.isenabled()
            gc.disable()
        _pauses["depth"] += 1
    try:
        yield
    finally:
        with _pausing:
            _pauses["depth"] -= 1
            if _pauses["depth"] == 0 and _pauses["was_enabled"]:
                gc.enable()
