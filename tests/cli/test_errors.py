"""The client's error lines and progress lines, and the CLI's errors without a server: no stack."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from descent_client import Client, ConnectionFailed, InvalidRequest, NotFound, Unauthorized
from descent_client.errors import UNAUTHORIZED, WRONG_KEY, ApiError, error_from_response, field_name
from descent_client.progress import LineWriter, bar, duration, job_parts, sweep_parts
from services.cli import app
from services.cli_output import job_detail
from services.spec import JobRead, WorkerInfo
from services.sweep_spec import LeaderEntry, SweepRead
from tests.e2e.conftest import free_port

REQUEST = httpx.Request("POST", "http://127.0.0.1:8000/v1/jobs")
FIELDS = [{"loc": ["body", "learning_rate"], "msg": "Input should be greater than 0", "type": "greater_than"},
          {"loc": ["body", "data", "x", 1], "msg": "row has 2 values, expected 1", "type": "value_error"}]
EXPECTED = "invalid input: learning_rate: Input should be greater than 0; data.x[1]: row has 2 values, expected 1"


def answer(status: int, body: object, content_type: str = "application/json") -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(), headers={"content-type": content_type},
                          request=REQUEST)


def test_a_422_names_each_field_in_the_fastapi_shape() -> None:
    error = error_from_response(answer(422, {"detail": FIELDS}))
    assert isinstance(error, InvalidRequest) and str(error) == EXPECTED
    assert [e.field for e in error.errors] == ["learning_rate", "data.x[1]"]


def test_a_422_names_each_field_in_the_problem_details_shape() -> None:
    body = {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
            "detail": "body.learning_rate: Input should be greater than 0 (and 1 more)", "instance": "/v1/jobs",
            "errors": [{**FIELDS[0], "pointer": "/learning_rate"}, FIELDS[1]]}
    error = error_from_response(answer(422, body, "application/problem+json"))
    assert isinstance(error, InvalidRequest) and str(error) == EXPECTED


@pytest.mark.parametrize("body", [
    {"detail": "job 7 not found"},
    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "job 7 not found"},
])
def test_other_errors_are_their_detail_text_in_both_shapes(body: dict) -> None:
    error = error_from_response(answer(404, body))
    assert isinstance(error, NotFound) and str(error) == "job 7 not found (HTTP 404)"


def test_a_401_says_how_to_give_a_key_and_a_non_json_answer_its_first_line() -> None:
    assert isinstance(error := error_from_response(answer(401, {"detail": "bad key"})), Unauthorized)
    assert str(error) == UNAUTHORIZED == "unauthorized: set --key or DESCENT_API_KEY"
    keyed = httpx.Response(401, json={"detail": "the API key is not valid"},
                           request=httpx.Request("GET", "http://api/v1/jobs", headers={"authorization": "Bearer x"}))
    assert isinstance(error := error_from_response(keyed), Unauthorized) and str(error) == WRONG_KEY
    html = httpx.Response(502, text="Bad Gateway\n<html>...</html>", request=REQUEST)
    assert str(error_from_response(html)) == "Bad Gateway (HTTP 502)"
    assert type(error_from_response(answer(418, {"title": "I'm a teapot"}))) is ApiError


@pytest.mark.parametrize(("loc", "name"), [
    (["body", "stop", "max_steps"], "stop.max_steps"), (["body", "init", "parameters", "layers", 0, "weight"],
     "init.parameters.layers[0].weight"), (["query", "limit"], "query limit"),
    (["header", "idempotency-key"], "header idempotency-key"), (["body"], ""), ("csv", "csv"),
])
def test_field_names(loc: list, name: str) -> None:
    assert field_name(loc) == name


def job(status: str = "running", step: int = 250, **extra: object) -> JobRead:
    now = datetime.now(UTC)
    values = dict(id="0c0c8f34-5a18-4f42-a0a8-f2c461bdd671", name="statquest-b3", status=status, step=step,
                  ssr=0.25, stop_reason=None, created_at=now, started_at=now, finished_at=None, attempts=1,
                  worker=WorkerInfo(), device="cpu")
    return JobRead.model_validate(values | extra)


def test_a_job_line_shows_step_of_max_steps_ssr_rate_eta_and_status() -> None:
    fraction, before, after = job_parts(job(), 1000, 50.0)
    assert fraction == 0.25 and before == "statquest-b3 0c0c8f34"
    assert after == "step 250/1000  SSR 0.25  50 steps/s  ETA 15s  running"
    fraction, _, after = job_parts(job("succeeded", 9, stop_reason="min_step_size"), 1000, 20.0)
    assert fraction == 1.0 and after == "step 9/1000  SSR 0.25  20 steps/s  succeeded (min_step_size)"
    assert job_parts(job(), None, None)[::2] == (None, "step 250  SSR 0.25  running")


def test_a_job_waiting_for_a_worker_of_its_device_says_so() -> None:
    """A gpu job with no gpu worker running waits until one starts: line and detail say which."""
    waiting = job("queued", 0, device="gpu", queue_workers=0)
    assert job_parts(waiting, 1000, None)[2] == "step 0/1000  SSR 0.25  queued (no gpu worker running)"
    assert "waits for:    a gpu worker: none is running; the job starts when one does" in job_detail(waiting)
    for served in (job("queued", 0, device="gpu", queue_workers=1), job("queued", 0)):
        assert job_parts(served, 1000, None)[2].endswith("  queued") and "waits for" not in job_detail(served)


def test_a_sweep_line_shows_members_by_status_best_ssr_and_eta() -> None:
    best = LeaderEntry(job_id="j", ssr=0.001, step=5, status="running", stop_reason=None, values={})
    sweep = SweepRead(id="5bf9c384-f382-4657", name="lr", status="running", created_at=datetime.now(UTC), members=6,
                      paths=["learning_rate"], counts={"queued": 1, "running": 3, "succeeded": 2},
                      stop_reasons={}, steps_done=300, steps_planned=6000, best=best, leaderboard=[best])
    fraction, before, after = sweep_parts(sweep, 120.0, 75.0)
    assert fraction == pytest.approx(2 / 6) and before == "sweep lr 5bf9c384"
    assert after == " 33%  6 members: 1 queued 3 running 2 succeeded  best SSR 0.001  120 steps/s  ETA 1m15s"


def test_bars_and_durations() -> None:
    assert bar(0.5, 10) == "[█████░░░░░]" and bar(None, 4, ascii_only=True) == "[....]"
    assert [duration(s) for s in (None, 4.4, 75, 7300)] == ["?", "4s", "1m15s", "2h01m"]


def test_a_log_gets_a_line_per_status_change_and_the_final_line() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream, interval=3600)
    for status, step, final in [("queued", 0, False), ("running", 100, False), ("running", 200, False),
                                ("succeeded", 300, True)]:
        writer.draw(*job_parts(job(status, step, finished_at=datetime.now(UTC) + timedelta(seconds=1)), 300, None),
                    key=status, final=final)
    lines = stream.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["queued", "running", "succeeded"]
    assert "step 300/300" in lines[-1] and "\r" not in stream.getvalue()


def test_no_answer_is_one_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed) as caught, Client(url, retries=2, max_backoff=0.05) as client:
        client.job("anything")
    assert str(caught.value).startswith(f"cannot reach Descent at {url}") and "\n" not in str(caught.value)


@pytest.mark.parametrize(("args", "message"), [
    (["ls"], "error: cannot reach Descent at "),
    (["submit", "missing.json"], "error: cannot read missing.json: No such file or directory"),
    (["predict", "some-id"], "error: give the points with --x (repeatable) or --csv FILE\n"),
    (["predict", "some-id", "--x", "1", "--csv", "p.csv"],
     "error: give the points with --x (repeatable) or --csv FILE, not both"),
    (["predict", "some-id", "--x", "a,b"], "error: --x 'a,b': expected numbers, got 'a,b'"),
])
def test_cli_errors_are_one_line_and_exit_1(args: list[str], message: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"DESCENT_URL": f"http://127.0.0.1:{free_port()}", "DESCENT_API_KEY": None}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_a_spec_that_is_not_json_is_named_with_its_line(tmp_path: Path) -> None:
    (spec := tmp_path / "job.json").write_text('{"name": "x",\n "learning_rate": }')
    result = CliRunner().invoke(app, ["submit", str(spec)], env={"DESCENT_URL": "http://127.0.0.1:1"})
    assert result.exit_code == 1
    assert result.stderr == f"error: {spec} is not valid JSON: Expecting value (line 2, column 19)\n"
