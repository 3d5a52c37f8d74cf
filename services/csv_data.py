"""CSV uploads into x/y matrices: pure parsing, no storage (``api.deps`` calls it, then the
dataset use case stores the result)."""

from __future__ import annotations

import csv
import io
import math
import re

from services.config import get_settings
from services.errors import InvalidInput
from services.spec import Matrix

_COLUMN = re.compile(r"^([xy])(\d*)$")


def parse_csv(text: str) -> tuple[Matrix, Matrix]:
    """Header row names the columns: ``x`` or ``x1, x2, ...`` are inputs, ``y`` or ``y1, ...``
    outputs, ordered by their number. Errors are located as ``("csv", line, column)`` with
    1-based file line numbers (the header is line 1), which is what an editor shows."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise InvalidInput(("csv",), "is empty; expected a header row like x,y")
    inputs, outputs = _columns(header, reader.line_num)
    x: Matrix = []
    y: Matrix = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            message = f"line {line} has {len(row)} fields, the header has {len(header)}"
            raise InvalidInput(("csv", line), message)
        x.append([_number(row, i, line, header) for i in inputs])
        y.append([_number(row, i, line, header) for i in outputs])
    if not x:
        raise InvalidInput(("csv",), "has a header but no data rows")
    limit = get_settings().max_points
    if len(x) > limit:
        raise InvalidInput(("csv",), f"{len(x)} rows exceed the limit of {limit} points")
    return x, y


def _columns(header: list[str], line: int) -> tuple[list[int], list[int]]:
    """Column indices of the inputs and outputs, each ordered by the number in the name."""
    found: dict[str, dict[int, int]] = {"x": {}, "y": {}}
    for index, raw in enumerate(header):
        name = raw.strip().lower()
        match = _COLUMN.match(name)
        if match is None:
            raise InvalidInput(("csv", line, raw.strip() or index), f"unknown column {raw.strip()!r}; "
                               "use x or x1, x2, ... for inputs and y or y1, y2, ... for outputs")
        kind, number = match.group(1), int(match.group(2) or 0)
        if number in found[kind]:
            raise InvalidInput(("csv", line, raw.strip()), f"duplicate column {raw.strip()!r}")
        found[kind][number] = index
    for kind in ("x", "y"):
        if not found[kind]:
            raise InvalidInput(("csv", line), f"no {kind} column in the header")
    return ([found["x"][n] for n in sorted(found["x"])], [found["y"][n] for n in sorted(found["y"])])


def _number(row: list[str], index: int, line: int, header: list[str]) -> float:
    column = header[index].strip()
    cell = row[index].strip()
    try:
        value = float(cell)
    except ValueError:
        message = f"line {line}, column {column}: {cell!r} is not a number"
        raise InvalidInput(("csv", line, column), message) from None
    if not math.isfinite(value):
        raise InvalidInput(("csv", line, column), f"line {line}, column {column}: {cell!r} is not finite")
    return value
