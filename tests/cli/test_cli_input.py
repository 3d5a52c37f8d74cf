"""The CLI's own input and output, against a stub API (no stack): a spec that is JSON but not an
object, non-finite numbers, and a reader that closes the pipe (``| head``), each one quiet line
or none, never "unexpected ... (a bug)"."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.cli.test_client_guards import job_read
from tests.e2e.conftest import ROOT

JOB_ID = "0c0c8f34-5a18-4f42-a0a8-f2c461bdd671"
STEPS = 200_000  # far more than a pipe holds


class StubApi(BaseHTTPRequestHandler):
    """A job and its long CSV history; records every path asked for."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append(self.path)
        path = self.path.split("?")[0]
        if path == f"/v1/jobs/{JOB_ID}":
            self._send(json.dumps(job_read(JOB_ID)).encode(), "application/json")
        elif path == f"/v1/jobs/{JOB_ID}/history":
            self._send(("step,ssr\n" + "".join(f"{i},{1.0 / (i + 1)}\n" for i in range(STEPS))).encode(), "text/csv")
        else:
            self._send(b'{"detail": "Not Found"}', "application/json", 404)

    def do_POST(self) -> None:  # noqa: N802
        self.seen.append(self.path)
        self._send(b'{"detail": "no"}', "application/json", 418)

    def _send(self, body: bytes, kind: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StubApi.seen.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_history_into_head_ends_quietly(stub: str) -> None:
    """``descent history ID --csv | head -3`` used to print "unexpected BrokenPipeError" and exit 1."""
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "history", JOB_ID, "--csv", "--url", stub],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()  # what head does after its lines
    _, err = proc.communicate(timeout=60)
    assert head == [b"step,ssr\n", b"0,1.0\n", b"1,0.5\n"]
    assert err == b"" and proc.returncode == 141


def test_the_whole_history_still_prints(stub: str) -> None:
    result = subprocess.run([sys.executable, "-m", "services.cli", "history", JOB_ID, "--csv", "--url", stub],
                            cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.count(b"\n") == STEPS + 1


@pytest.mark.parametrize(("command", "stdin", "message"), [
    ("submit", "[1, 2]", "error: stdin holds an array, not a job spec: a job spec is a JSON object"),
    ("submit", '[["name", "x"], ["learning_rate", 0.1]]', "error: stdin holds an array, not a job spec"),
    ("sweep", '"x"', "error: stdin holds a string, not a sweep spec: a sweep spec is a JSON object"),
    ("submit", "3", "error: stdin holds a number, not a job spec"),
    ("sweep", "null", "error: stdin holds null, not a sweep spec"),
    ("submit", '{"learning_rate": NaN}', "error: stdin is not valid JSON: NaN is not a JSON number"),
    ("submit", '{"learning_rate": -Infinity}', "error: stdin is not valid JSON: -Infinity is not a JSON number"),
])
def test_a_spec_that_is_not_a_json_object_is_refused(stub: str, command: str, stdin: str, message: str) -> None:
    result = CliRunner().invoke(app, [command, "-", "--url", stub], input=stdin)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert StubApi.seen == []  # nothing was sent


def test_a_spec_file_that_is_not_an_object_names_the_file(stub: str, tmp_path: Path) -> None:
    (spec := tmp_path / "job.json").write_text("[1, 2]")
    result = CliRunner().invoke(app, ["submit", str(spec), "--url", stub])
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {spec} holds an array, not a job spec")


@pytest.mark.parametrize(("args", "message"), [
    (["--x", "nan"], "error: --x 'nan': expected finite numbers, got 'nan'"),
    (["--x", "0.5", "--x", "1,inf"], "error: --x '1,inf': expected finite numbers, got '1,inf'"),
    (["--x", "1e999"], "error: --x '1e999': expected finite numbers, got '1e999'"),
])
def test_non_finite_points_are_refused(stub: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["predict", JOB_ID, *args, "--url", stub])
    assert result.exit_code == 1, result.output
    assert result.stderr == message + "\n"
    assert not any(path.endswith("/predict") for path in StubApi.seen)


def test_non_finite_points_in_a_csv_are_refused(stub: str, tmp_path: Path) -> None:
    (points := tmp_path / "points.csv").write_text("x\n0.5\nNaN\n")
    result = CliRunner().invoke(app, ["predict", JOB_ID, "--csv", str(points), "--url", stub])
    assert result.exit_code == 1 and result.stderr == "error: CSV line 3: expected finite numbers, got 'NaN'\n"


@pytest.mark.parametrize(("text", "got"), [("0.1\n0.2\n", "0.1"), ("y\n0.3\n", "y"), ("foo,bar\n1,2\n", "foo,bar")])
def test_a_csv_without_an_input_column_is_refused_not_read_as_points(stub: str, tmp_path: Path, text: str,
                                                                     got: str) -> None:
    """A first line of numbers (no header) was taken as the header and that point dropped; a
    header without x was read as the input anyway."""
    (points := tmp_path / "points.csv").write_text(text)
    result = CliRunner().invoke(app, ["predict", JOB_ID, "--csv", str(points), "--url", stub])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: the CSV's first line names no input column (x, or x1, x2...): got {got!r}\n"
    assert not any(path.endswith("/predict") for path in StubApi.seen)


def test_a_finished_sweep_with_early_stops_shows_100_percent_below_its_planned_steps() -> None:
    from datetime import datetime, timezone

    from services.cli_output import sweep_detail
    from services.sweep_spec import SweepRead

    sweep = SweepRead(id="s", name="n", status="finished", created_at=datetime.now(timezone.utc), members=9,
                      paths=["learning_rate"], counts={"succeeded": 9}, stop_reasons={"early_stopped": 8},
                      steps_done=1100, steps_planned=4500, best=None, leaderboard=[])
    assert "100% (1100 of 4500 planned steps trained)" in sweep_detail(sweep)


@pytest.mark.parametrize("command", ["history", "params", "predict"])
def test_job_only_commands_do_not_offer_a_sweeps_id_in_their_help(command: str) -> None:
    """history, params and predict read /v1/jobs/{id}/...: a sweep's id is a 404 there, yet their
    --help said "A job's or a sweep's id"."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    assert "A job's id" in result.output and "A job's or a sweep's id" not in result.output


def test_demo_help_says_it_does_not_read_descent_home() -> None:
    """``descent demo`` always starts on a fresh temporary home unless --home is given; its help
    said "DESCENT_HOME; ...", which reads as if the variable were its default."""
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    assert "DESCENT_HOME is not read" in result.output
