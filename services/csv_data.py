"""CSV uploads into x/y matrices: pure parsing, no storage (``api.deps`` calls it, then the
dataset use case stores the result).

Any line ending is a line ending (``\\n``, ``\\r\\n``, ``\\r``, mixed in one file); anything the
reader cannot take (a NUL byte, an unclosed quote, a cell over the field size limit) is an input
error naming its line, as is every cell that is not a finite number.

A number is what a JSON body could hold, written plainly: an optional sign, ASCII digits, an
optional fraction and exponent (``-1``, ``0.5``, ``.5``, ``1e-3``). Python's ``float()`` takes more
(``1_000``, digits of other scripts such as ``١``, words such as ``nan`` and ``inf``), so cells are
matched first: ``nan``, ``inf`` and ``infinity`` are refused as not finite, as a JSON body's NaN
and Infinity are, and anything else that is not a plain number as not a number.
"""

from __future__ import annotations

import csv
import io
import math
import re
from typing import Any

from services.config import get_settings
from services.errors import InvalidInput
from services.spec import Matrix

_COLUMN = re.compile(r"([xy])([0-9]{0,6})", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.ASCII | re.IGNORECASE)
_SHOWN = 40  # characters of a bad cell quoted in an error
_NAMES = "use x or x1, x2, ... for inputs and y or y1, y2, ... for outputs"


Loc = tuple[str | int, ...]


def parse_csv(text: str, loc: Loc = ("csv",)) -> tuple[Matrix, Matrix]:
    """Header row names the columns: ``x`` or ``x1, x2, ...`` are inputs, ``y`` or ``y1, ...``
    outputs, ordered by their number. Errors are located as ``(*loc, line, column)`` with
    1-based file line numbers (the header is line 1), which is what an editor shows; ``loc`` is
    where the CSV is in the request (``("csv",)`` for a CSV body, ``("file",)`` for an upload)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    first = _next_row(reader, loc)
    if first is None:
        raise InvalidInput(loc, "is empty; expected a header row like x,y")
    header, line = first
    inputs, outputs = _columns(header, line, loc)
    limit = get_settings().max_points
    x: Matrix = []
    y: Matrix = []
    while (found := _next_row(reader, loc)) is not None:
        row, line = found
        if len(row) != len(header):
            raise InvalidInput((*loc, line), f"line {line} has {len(row)} fields, the header has {len(header)}")
        x.append([_number(row, i, header, (*loc, line)) for i in inputs])
        y.append([_number(row, i, header, (*loc, line)) for i in outputs])
        if len(x) > limit:
            raise InvalidInput((*loc, line), f"more than {limit} rows: the limit is {limit} points")
    if not x:
        raise InvalidInput(loc, "has a header but no data rows")
    return x, y


def _next_row(reader: Any, loc: Loc) -> tuple[list[str], int] | None:  # a csv.reader (its type is private)
    """The next row with a non-blank cell and the line it starts on, or None at the end. A
    quoted cell may span lines: the reader's line number is then the record's last line, where
    an editor would not look for the record's fault."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            line = reader.line_num
            raise InvalidInput((*loc, line), f"line {line} cannot be read as CSV: {exc}") from None
        if any(cell.strip() for cell in row):
            return row, start


def _columns(header: list[str], line: int, loc: Loc) -> tuple[list[int], list[int]]:
    """Column indices of the inputs and outputs, each ordered by the number in the name."""
    found: dict[str, dict[int, int]] = {"x": {}, "y": {}}
    for index, raw in enumerate(header):
        name = raw.strip().lower()
        match = _COLUMN.fullmatch(name)
        if match is None:
            column = raw.strip()[:_SHOWN] or index + 1
            raise InvalidInput((*loc, line, column), f"unknown column {_shown(raw.strip())}; {_NAMES}")
        kind, number = match.group(1), int(match.group(2) or 0)
        if number in found[kind]:
            raise InvalidInput((*loc, line, raw.strip()), f"duplicate column {raw.strip()!r}")
        found[kind][number] = index
    for kind in ("x", "y"):
        if not found[kind]:
            raise InvalidInput((*loc, line), f"no {kind} column in the header; {_NAMES}")
    return ([found["x"][n] for n in sorted(found["x"])], [found["y"][n] for n in sorted(found["y"])])


def _number(row: list[str], index: int, header: list[str], at_line: Loc) -> float:
    """The cell as a finite float; ``at_line`` is ``(*loc, line)``."""
    column = header[index].strip()
    cell = row[index].strip()
    line = at_line[-1]
    where = f"line {line}, column {column}: {_shown(cell)}"
    if _NOT_FINITE.fullmatch(cell):
        raise InvalidInput((*at_line, column), f"{where} is not finite")
    if not _NUMBER.fullmatch(cell):
        raise InvalidInput((*at_line, column), f"{where} is not a number")
    value = float(cell)
    if not math.isfinite(value):  # 1e400: a plain number, but beyond float64
        raise InvalidInput((*at_line, column), f"{where} is not finite (too large)")
    return value


def _shown(cell: str) -> str:
    """A cell quoted in a message, shortened: a 1 MB cell is not sent back."""
    return repr(cell if len(cell) <= _SHOWN else cell[:_SHOWN] + "...")
