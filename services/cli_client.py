"""The client commands of ``descent``: submit, sweep, watch, ls, show, history, params, predict,
cancel, leaderboard, plot. Each parses its arguments, calls ``descent_client`` (so, the HTTP
API) and prints; every error becomes one line on stderr and a non-zero exit, in ``command``.

Exit codes: 0 ok (``watch``/``--wait``: the job succeeded, the sweep finished), 1 an error,
2 bad usage, 3 failed, 4 diverged, 5 cancelled, 130 interrupted, 141 the reader of the output
went away (``descent history ID --csv | head``: quietly, as other tools).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.exceptions import TyperException

from descent_client import DEFAULT_URL, Client, DescentError, Job, NotFound, Sweep
from services import cli_output as out
from services.spec import JobStatus, Matrix

app = typer.Typer()
PANEL = "Use the service (a client of the HTTP API)"
EXIT_CODES = {"succeeded": 0, "finished": 0, "failed": 3, "diverged": 4, "cancelled": 5}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool stopped by `| head`
F = TypeVar("F", bound=Callable[..., Any])

Url = Annotated[str, typer.Option("--url", envvar="DESCENT_URL", help="The API's address")]
Key = Annotated[str | None, typer.Option("--key", envvar="DESCENT_API_KEY", show_default=False,
                                         help="API key, sent as a Bearer token")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout)")]
Id = Annotated[str, typer.Argument(metavar="ID", help="A job's or a sweep's id", show_default=False)]
JobId = Annotated[str, typer.Argument(metavar="ID", help="A job's id (not a sweep's)", show_default=False)]
SpecFile = Annotated[Path, typer.Argument(metavar="SPEC.json", help="JSON file, or - for stdin", show_default=False)]
Wait = Annotated[bool, typer.Option("--wait", help="Then watch it to the end; exit with its final status")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the id")]


class CliError(Exception):
    """A local problem (a file, an argument) reported like the client's errors."""


def command(name: str) -> Callable[[F], F]:
    """Register a client command; its errors become one line and exit 1 (130 on Ctrl-C, 141
    quietly when stdout's reader went away)."""

    def register(function: F) -> F:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                try:
                    return function(*args, **kwargs)
                finally:
                    sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
            except BrokenPipeError:
                _stdout_gone()
            except (DescentError, CliError) as exc:
                _fail(f"error: {exc}", 1)
            except KeyboardInterrupt:
                _fail("interrupted", 130)
            except Exception as exc:  # noqa: BLE001 (a bug: still one line, the traceback on demand)
                if isinstance(exc, (typer.Exit, typer.Abort, TyperException)) or os.environ.get("DESCENT_DEBUG"):
                    raise
                _fail(f"error: unexpected {type(exc).__name__}: {exc} (DESCENT_DEBUG=1 shows the traceback)", 1)

        app.command(name, rich_help_panel=PANEL)(run)
        return function

    return register


def _fail(message: str, code: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _stdout_gone() -> None:
    """Stdout's reader closed the pipe (``| head``): what is still buffered goes nowhere, and
    the command ends quietly with 141, as ``yes | head`` does."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    raise typer.Exit(EXIT_BROKEN_PIPE)


def _client(url: str, key: str | None) -> Client:
    return Client(url, key or None)


@command("submit")
def submit(spec: SpecFile, wait: Wait = False, quiet: Quiet = False, url: Url = DEFAULT_URL, key: Key = None,
           as_json: Json = False) -> None:
    """Submit a training job from a JSON spec (see README); print its id.

    With --wait, watch it to the end and exit with its final status (see watch)."""
    job = _client(url, key).submit(_read_json(spec, "job"))
    _created(job, quiet, as_json, wait)


@command("sweep")
def sweep(spec: SpecFile, wait: Wait = False, quiet: Quiet = False, url: Url = DEFAULT_URL, key: Key = None,
          as_json: Json = False) -> None:
    """Submit a sweep (a base job, grid and/or random values); print its id.

    With --wait, watch it to the end and exit with its final status (see watch)."""
    created = _client(url, key).sweep(_read_json(spec, "sweep"))
    _created(created, quiet, as_json, wait)


def _created(resource: Job | Sweep, quiet: bool, as_json: bool, wait: bool) -> None:
    if as_json:
        if not wait:  # with --wait, the final state is printed instead
            typer.echo(out.to_json(resource.info))
    elif quiet:
        typer.echo(resource.id)
    else:
        extra = f" ({resource.info.members} members)" if isinstance(resource, Sweep) else ""
        typer.echo(f"submitted {resource.kind} {resource.id} ({resource.info.name}){extra}: {resource.status}")
        if not wait:
            typer.echo(f"follow it with: descent watch {resource.id}")
    if wait:
        _watch(resource, as_json)


@command("watch")
def watch(resource_id: Id, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False) -> None:
    """Follow a job or sweep live until it finishes; exit with its final status.

    A job: step of max_steps, SSR, steps/s, ETA. A sweep: members by status, best SSR, a bar for
    the whole sweep. Exit code 0 succeeded (a sweep: finished), 3 failed, 4 diverged, 5 cancelled."""
    _watch(_client(url, key).find(resource_id), as_json)


def _watch(resource: Job | Sweep, as_json: bool) -> None:
    try:
        final = resource.wait(progress=True)
    except KeyboardInterrupt:
        _fail(f"interrupted; the {resource.kind} goes on (descent cancel {resource.id} stops it)", 130)
    if as_json:
        typer.echo(out.to_json(final))
    raise typer.Exit(EXIT_CODES.get(final.status, 1))


@command("ls")
def ls(
    sweep_id: Annotated[str | None, typer.Option("--sweep", help="Only this sweep's members")] = None,
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs with this status")] = None,
    sweeps: Annotated[bool, typer.Option("--sweeps", help="List sweeps instead of jobs")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first")] = 50,
    url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False,
) -> None:
    """List jobs (newest first), or sweeps with --sweeps."""
    client = _client(url, key)
    if sweeps:
        if sweep_id or status:
            raise CliError("--sweeps lists every sweep; --sweep and --status filter jobs")
        found: list[Any] = list(client.sweeps(limit=limit))
        typer.echo(out.to_json(found) if as_json else out.sweeps_table(found))
        return
    found = list(client.jobs(status=status, sweep_id=sweep_id, limit=limit))
    typer.echo(out.to_json(found) if as_json else out.jobs_table(found))


@command("show")
def show(resource_id: Id, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False) -> None:
    """Show a job (status, step, SSR, timing, worker) or a sweep (counts, leaderboard)."""
    resource = _client(url, key).find(resource_id)
    if as_json:
        typer.echo(out.to_json(resource.info))
    elif isinstance(resource, Job):
        typer.echo(out.job_detail(resource.info))
    else:
        typer.echo(out.sweep_detail(resource.info))


@command("history")
def history(
    job_id: JobId,
    as_csv: Annotated[bool, typer.Option("--csv", help="step,ssr as CSV")] = False,
    every: Annotated[int | None, typer.Option(min=1, help="Keep every n-th step")] = None,
    max_points: Annotated[int | None, typer.Option(min=2, help="Thin to at most this many points")] = None,
    url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False,
) -> None:
    """Print a job's SSR at every step, streamed (any length; step 0 is before the first update)."""
    job = _client(url, key).job(job_id)
    if as_json:
        typer.echo(out.to_json(job.history(every=every, max_points=max_points)))
        return
    lines = job.history_lines("csv" if as_csv else "ndjson", every=every, max_points=max_points)
    for line in lines if as_csv else out.history_rows(lines):
        typer.echo(line)


@command("params")
def params(
    job_id: JobId,
    step: Annotated[int | None, typer.Option(min=0, help="A checkpointed step; the latest if absent")] = None,
    digits: Annotated[int | None, typer.Option(min=0, max=17, help="Round to this many decimals")] = None,
    url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False,
) -> None:
    """Print a job's trained parameters (weights are out x in)."""
    found = _client(url, key).job(job_id).parameters(step)
    typer.echo(out.to_json(found) if as_json else out.parameters_text(found, digits))


@command("predict")
def predict(
    job_id: JobId,
    x: Annotated[list[str] | None, typer.Option("--x", help="One point: a number, or comma-separated "
                                                "inputs; repeat for more points")] = None,
    from_csv: Annotated[Path | None, typer.Option("--csv", help="Points from a CSV file with a header "
                                                  "(columns x or x1, x2...; others ignored)")] = None,
    url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False,
) -> None:
    """Run a job's trained network on points.

    --x 0.25 --x 0.5 (a point per --x; comma-separated for several inputs), or --csv points.csv."""
    points = _points(x or [], from_csv)
    y = _client(url, key).job(job_id).predict(points)
    typer.echo(out.to_json({"x": points, "y": y}) if as_json else out.predictions_text(points, y))


@command("cancel")
def cancel(resource_id: Id, url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False) -> None:
    """Cancel a job, or every unfinished member of a sweep.

    Queued work never starts; running work stops at its next checkpoint."""
    resource = _client(url, key).find(resource_id)
    info = resource.cancel()
    pending = " (cancel requested: it stops at its next checkpoint)" if getattr(info, "cancel_requested", False) \
        and info.status == "running" else ""
    typer.echo(out.to_json(info) if as_json else f"{resource.kind} {resource.id}: {info.status}{pending}")


@command("leaderboard")
def leaderboard(sweep_id: Annotated[str, typer.Argument(metavar="SWEEP", help="A sweep's id", show_default=False)],
                url: Url = DEFAULT_URL, key: Key = None, as_json: Json = False) -> None:
    """Print a sweep's best members (at most 10) by SSR, with their values."""
    found = _client(url, key).get_sweep(sweep_id)
    board = found.info.leaderboard
    typer.echo(out.to_json(board) if as_json else out.leaderboard_table(board, found.info.paths))


@command("plot")
def plot(
    resource_id: Id,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG file to write; ID.png if absent")] = None,
    url: Url = DEFAULT_URL, key: Key = None,
) -> None:
    """Download the server's PNG picture of a job or a sweep."""
    resource = _client(url, key).find(resource_id)
    try:
        png = resource.plot()
    except NotFound as exc:
        raise CliError(f"no plot of {resource.kind} {resource.id}: {exc.detail or 'not found'} "
                       f"(GET {resource.path}/plot.png answered 404)") from None
    path = output or Path(f"{resource.id}.png")
    try:
        path.write_bytes(png)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {path} ({len(png)} bytes)")


JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
              type(None): "null"}


def _read_json(path: Path, kind: str) -> dict[str, Any]:
    """The spec in ``path`` (``-``: stdin): a JSON object, or a ``CliError`` saying why not."""
    where = "stdin" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{where} is not text (UTF-8): {exc.reason} at byte {exc.start}") from None

    def no_constants(name: str) -> None:
        raise CliError(f"{where} is not valid JSON: {name} is not a JSON number")

    try:
        found = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(found, dict):
        raise CliError(f"{where} holds {JSON_KINDS.get(type(found), 'a value')}, not a {kind} spec: "
                       f"a {kind} spec is a JSON object ({{\"name\": ...}}; see README)")
    return found


def _points(values: list[str], from_csv: Path | None) -> Matrix:
    if values and from_csv is not None:
        raise CliError("give the points with --x (repeatable) or --csv FILE, not both")
    if not values and from_csv is None:
        raise CliError("give the points with --x (repeatable) or --csv FILE")
    if from_csv is not None:
        try:
            return _csv_points(from_csv.read_text())
        except OSError as exc:
            raise CliError(f"cannot read {from_csv}: {exc.strerror or exc}") from None
    return [_numbers(value.split(","), f"--x {value!r}") for value in values]


def _csv_points(text: str) -> Matrix:
    rows = [row for row in csv.reader(io.StringIO(text.lstrip("\ufeff"))) if any(c.strip() for c in row)]
    if len(rows) < 2:
        raise CliError("the CSV needs a header row and at least one point")
    header = [name.strip().lower() for name in rows[0]]
    columns = [i for i, name in enumerate(header) if name == "x" or (name[:1] == "x" and name[1:].isdigit())]
    if not columns:  # a header of numbers is a point, not names: say so rather than drop it
        raise CliError(f"the CSV's first line names no input column (x, or x1, x2...): got {','.join(rows[0])!r}")
    columns = sorted(columns, key=lambda i: int(header[i][1:] or 0))
    return [_numbers([row[i] if i < len(row) else "" for i in columns], f"CSV line {n}")
            for n, row in enumerate(rows[1:], 2)]


def _numbers(cells: list[str], where: str) -> list[float]:
    try:
        numbers = [float(cell) for cell in cells]
    except ValueError:
        raise CliError(f"{where}: expected numbers, got {','.join(cells)!r}") from None
    if not all(math.isfinite(number) for number in numbers):
        raise CliError(f"{where}: expected finite numbers, got {','.join(cells)!r}")
    return numbers
