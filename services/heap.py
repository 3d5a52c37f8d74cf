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


def freeze() -> None:
    """Call once a process has imported and built what it keeps (its app, engine, tasks)."""
    gc.collect()  # what is garbage now must not be frozen with the rest
    gc.freeze()
