"""How the client commands of ``descent`` print things: plain aligned tables and ``--json``.

Pure functions from the API's read models to text; the commands in ``services.cli_client``
only choose which one to print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from descent_client.progress import sweep_fraction
from services.spec import JobRead, Matrix, ParametersRead
from services.sweep_spec import LeaderEntry, SweepRead


def to_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json(indent=2)
    if isinstance(value, dict):
        return json.dumps(value, indent=2)
    return json.dumps([item.model_dump(mode="json") for item in value], indent=2)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns two spaces apart; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return when(value)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def jobs_table(jobs: Sequence[JobRead]) -> str:
    rows = [(j.id, j.name, j.status, j.step, j.ssr, j.stop_reason, j.created_at) for j in jobs]
    return table(("ID", "NAME", "STATUS", "STEP", "SSR", "STOP", "CREATED"), rows)


def sweeps_table(sweeps: Sequence[SweepRead]) -> str:
    rows = [(s.id, s.name, s.status, s.members, _counts(s.counts), s.best.ssr if s.best else None, s.created_at)
            for s in sweeps]
    return table(("ID", "NAME", "STATUS", "MEMBERS", "BY STATUS", "BEST SSR", "CREATED"), rows)


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{status}:{n}" for status, n in counts.items() if n) or "-"


def job_detail(job: JobRead) -> str:
    worker = f"{job.worker.hostname or '-'} pid {job.worker.pid}" if job.worker.pid else "-"
    fields: list[tuple[str, Any]] = [
        ("job", job.id), ("name", job.name), ("status", job.status), ("stop reason", job.stop_reason),
        ("step", job.step), ("SSR", job.ssr), ("device", job.device), ("attempts", job.attempts),
        ("worker", worker), ("created", job.created_at), ("started", job.started_at),
        ("finished", job.finished_at),
    ]
    if job.sweep_id:
        fields += [("sweep", job.sweep_id), ("values", json.dumps(job.sweep_values))]
    if job.cancel_requested:
        fields.append(("cancel", "requested: it stops at its next checkpoint"))
    if job.rung is not None:
        fields.append(("waits at rung", job.rung))
    if job.queue_workers == 0:
        fields.append(("waits for", f"a {job.device} worker: none is running; the job starts when one does"))
    if job.error:
        fields.append(("error", job.error))
    return _pairs(fields)


def sweep_detail(sweep: SweepRead) -> str:
    # Planned steps are an upper bound (stop rules, halving): a finished sweep is 100% below it.
    share = f"{sweep_fraction(sweep):.0%} ({sweep.steps_done} of {sweep.steps_planned} planned steps trained)"
    fields: list[tuple[str, Any]] = [
        ("sweep", sweep.id), ("name", sweep.name), ("status", sweep.status), ("members", sweep.members),
        ("by status", _counts(sweep.counts)), ("stop reasons", _counts(sweep.stop_reasons)), ("progress", share),
        ("varies", ", ".join(sweep.paths) or "-"), ("created", sweep.created_at), ("finished", sweep.finished_at),
    ]
    if sweep.early_stopping:
        halving = sweep.early_stopping
        rule = f"{halving.type} min_steps {halving.min_steps} eta {halving.reduction_factor}"
        fields.append(("early stopping", rule))
    text = _pairs(fields)
    return text + ("\n\n" + leaderboard_table(sweep.leaderboard, sweep.paths) if sweep.leaderboard else "")


def _pairs(fields: Sequence[tuple[str, Any]]) -> str:
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name + ':':<{width + 1}}  {_cell(value)}" for name, value in fields)


def leaderboard_table(entries: Sequence[LeaderEntry], paths: Sequence[str]) -> str:
    rows = [(rank, e.job_id, e.ssr, e.step, e.status, e.stop_reason, *(_value(e.values.get(p)) for p in paths))
            for rank, e in enumerate(entries, 1)]
    return table(("#", "JOB", "SSR", "STEP", "STATUS", "STOP", *paths), rows)


def _value(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) or value is None else json.dumps(value)


def history_rows(ndjson: Iterable[str]) -> Iterator[str]:
    """Streamed ``{"step", "ssr"}`` lines as a two-column table, row by row."""
    yield f"{'STEP':>10}  SSR"
    for line in ndjson:
        if line.strip():
            point = json.loads(line)
            ssr = "NaN" if point["ssr"] is None else f"{point['ssr']:.10g}"
            yield f"{point['step']:>10}  {ssr}"


def parameters_text(parameters: ParametersRead, digits: int | None) -> str:
    def numbers(values: Sequence[Any]) -> str:
        return "[" + ", ".join(numbers(v) if isinstance(v, list) else _number(v, digits) for v in values) + "]"

    stored = parameters.checkpoint_steps
    others = ""
    if len(stored) > 1:
        others = f" ({len(stored)} stored, steps {stored[0]} to {stored[-1]}; pick one with --step)"
    lines = [f"checkpoint at step {parameters.step}{others}"]
    for i, layer in enumerate(parameters.layers):
        lines.append(f"layers.{i}.weight  {numbers(layer.weight)}")
        lines.append(f"layers.{i}.bias    {numbers(layer.bias)}")
    return "\n".join(lines)


def _number(value: float, digits: int | None) -> str:
    return repr(value) if digits is None else f"{value:.{digits}f}"


def predictions_text(x: Matrix, y: Matrix) -> str:
    def row(values: list[float]) -> str:
        return ", ".join(f"{v:.6g}" for v in values)

    return table(("X", "Y"), ((row(a), row(b)) for a, b in zip(x, y)))
