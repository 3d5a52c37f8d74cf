"""The client commands of ``descent`` against a real embedded stack with auth on, run as a user
runs them (in this process through typer's runner; once through the entry point's module)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from services.cli import app
from services.examples import statquest_job
from tests.e2e.conftest import ROOT, Running

pytestmark = pytest.mark.slow
KEY = "cli-test-key-0123456789"
STACK_ENV = {"DESCENT_API_KEYS": f"cli:{KEY}"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def run(stack: Running, *args: str, code: int = 0, key: str | None = KEY, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=stdin, env={"DESCENT_URL": stack.url, "DESCENT_API_KEY": key})
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("specs")
    (folder / "statquest.json").write_text(json.dumps(statquest_job()))
    sweep = {"name": "lr-scan", "base": statquest_job(), "grid": {"learning_rate": [0.05, 0.1]}}
    (folder / "sweep.json").write_text(json.dumps(sweep))
    (folder / "bad.json").write_text(json.dumps(statquest_job() | {"stop": {"max_steps": -1}}))
    return folder


@pytest.fixture(scope="module")
def job_id(stack: Running, specs: Path) -> str:
    """The StatQuest job, submitted and waited for with ``descent submit --wait``."""
    result = run(stack, "submit", str(specs / "statquest.json"), "--wait")
    assert "succeeded (min_step_size)" in result.stderr.splitlines()[-1]
    return UUID.search(result.stdout).group()


def test_submit_prints_the_id_and_watch_exits_with_the_final_status(stack: Running, specs: Path) -> None:
    job = run(stack, "submit", "-q", str(specs / "statquest.json")).stdout.strip()
    assert UUID.fullmatch(job)
    watched = run(stack, "watch", job, "--json")
    assert json.loads(watched.stdout)["status"] == "succeeded"
    assert re.search(r"statquest-b3 \w{8} \[█+\] step 9/1000  SSR [\d.e-]+ .*succeeded \(min_step_size\)$",
                     watched.stderr.splitlines()[-1])
    long_spec = json.dumps(statquest_job() | {"stop": {"max_steps": 10**6}, "checkpoint_every": 1000})
    long_id = run(stack, "submit", "-q", "-", stdin=long_spec).stdout.strip()
    said = run(stack, "cancel", long_id).stdout
    assert UUID.fullmatch(long_id) and said.startswith(f"job {long_id}: "), said
    assert said.strip() in (f"job {long_id}: cancelled",  # still queued: ended at once
                            f"job {long_id}: running (cancel requested: it stops at its next checkpoint)"), said
    run(stack, "watch", long_id, code=5)


def test_show_history_params_predict(stack: Running, job_id: str, tmp_path: Path) -> None:
    shown = run(stack, "show", job_id).stdout
    assert re.search(r"status:\s+succeeded", shown) and re.search(r"stop reason:\s+min_step_size", shown)
    rows = list(csv.reader(io.StringIO(run(stack, "history", job_id, "--csv").stdout)))
    assert rows[0] == ["step", "ssr"] and [r[0] for r in rows[1:]] == [str(s) for s in range(10)]
    assert round(float(rows[1][1]), 2) == 20.42
    assert "layers.1.bias    [2.61]" in run(stack, "params", job_id, "--digits", "2").stdout
    layers = json.loads(run(stack, "params", job_id, "--json").stdout)["layers"]
    assert layers[1]["bias"][0] == pytest.approx(2.6085, abs=1e-4)
    table = run(stack, "predict", job_id, "--x", "0.25", "--x", "0.5").stdout.splitlines()
    assert table[0].split() == ["X", "Y"] and [line.split()[0] for line in table[1:]] == ["0.25", "0.5"]
    (points := tmp_path / "points.csv").write_text("y,x\n1,0.25\n1,0.5\n")
    by_csv = run(stack, "predict", job_id, "--csv", str(points), "--json").stdout
    assert json.loads(by_csv)["x"] == [[0.25], [0.5]] and len(json.loads(by_csv)["y"]) == 2


def test_ls_filters_by_status_and_sweep(stack: Running, job_id: str, specs: Path) -> None:
    assert job_id in run(stack, "ls", "--status", "succeeded").stdout
    assert job_id not in run(stack, "ls", "--status", "failed").stdout
    sweep = run(stack, "sweep", str(specs / "sweep.json"), "--wait", "--json")
    sweep_id = json.loads(sweep.stdout)["id"]
    assert sweep.stderr.splitlines()[-1].endswith("finished") and "2 succeeded" in sweep.stderr
    members = json.loads(run(stack, "ls", "--sweep", sweep_id, "--json").stdout)
    assert sorted(m["name"] for m in members) == ["lr-scan-0", "lr-scan-1"]
    board = run(stack, "leaderboard", sweep_id).stdout.splitlines()
    assert board[0].split() == ["#", "JOB", "SSR", "STEP", "STATUS", "STOP", "learning_rate"] and len(board) == 3
    assert "lr-scan" in run(stack, "ls", "--sweeps").stdout
    assert re.search(r"by status:\s+succeeded:2", run(stack, "show", sweep_id).stdout)
    run(stack, "watch", sweep_id)


def test_plot_downloads_a_png(stack: Running, job_id: str, tmp_path: Path) -> None:
    out = tmp_path / "job.png"
    assert run(stack, "plot", job_id, "-o", str(out)).stdout.startswith(f"wrote {out} (")
    assert out.read_bytes().startswith(b"\x89PNG")


def test_errors_are_one_line_without_traceback(stack: Running, job_id: str, specs: Path) -> None:
    refused = run(stack, "submit", str(specs / "bad.json"), code=1)
    assert refused.stderr.startswith("error: invalid input: stop.max_steps: ") and refused.stderr.count("\n") == 1
    assert run(stack, "show", "no-such-id", code=1).stderr == "error: no job or sweep with id no-such-id (HTTP 404)\n"
    finished = run(stack, "cancel", job_id, code=1).stderr
    assert finished.startswith("error: ") and "(HTTP 409)" in finished and finished.count("\n") == 1
    done = subprocess.run([sys.executable, "-m", "services.cli", "plot", "no-such-id"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={"DESCENT_URL": stack.url, "DESCENT_API_KEY": KEY, "PATH": "/usr/bin:/bin"})
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: no job or sweep with id no-such-id (HTTP 404)\n"


def test_a_missing_or_wrong_key_is_one_line_and_key_flag_works(stack: Running, job_id: str) -> None:
    for key, says in [(None, "set --key or DESCENT_API_KEY"),
                      ("not-the-key-0123456789", "the API key given (--key or DESCENT_API_KEY) is not valid")]:
        refused = run(stack, "show", job_id, key=key, code=1)
        assert refused.stderr == f"error: unauthorized: {says}\n"
    assert job_id in run(stack, "show", job_id, "--key", KEY, key=None).stdout
