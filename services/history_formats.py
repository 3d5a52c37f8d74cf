"""A long SSR history as a stream of lines (CSV or NDJSON) instead of one JSON document: a
million steps would be a 7 MB document built in memory; here the client reads rows as they are
written, ``ROWS`` at a time."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np

ROWS = 10_000  # rows per written piece
MEDIA_TYPES = {"csv": "text/csv", "ndjson": "application/x-ndjson"}


def csv_lines(steps: np.ndarray, ssr: np.ndarray) -> Iterator[str]:
    """``step,ssr`` with a header; a non-finite SSR is written as Python and NumPy read it
    (``nan``, ``inf``): CSV has no null."""
    yield "step,ssr\n"
    for start in range(0, len(steps), ROWS):
        part = zip(steps[start:start + ROWS].tolist(), ssr[start:start + ROWS].tolist())
        yield "".join(f"{step},{value!r}\n" for step, value in part)


def ndjson_lines(steps: np.ndarray, ssr: np.ndarray) -> Iterator[str]:
    """One ``{"step": n, "ssr": x}`` object per line; a non-finite SSR is null, as in the JSON
    history."""
    for start in range(0, len(steps), ROWS):
        part = zip(steps[start:start + ROWS].tolist(), ssr[start:start + ROWS].tolist())
        yield "".join(json.dumps({"step": step, "ssr": value if math.isfinite(value) else None}) + "\n"
                      for step, value in part)


def lines(fmt: str, steps: np.ndarray, ssr: np.ndarray) -> Iterator[str]:
    return csv_lines(steps, ssr) if fmt == "csv" else ndjson_lines(steps, ssr)
