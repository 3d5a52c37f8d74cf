"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium``) against
``descent up`` with a finished StatQuest job and a finished sweep. The DOM after the page's own
requests must list the job and the sweep's leaderboard; a screenshot must show the SSR curve
drawn in the chart. Chromium is installed with apt-get when missing (skipped only if that fails).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.examples import statquest_job
from tests.e2e.conftest import Running
from tests.e2e.test_stack import train_statquest

pytestmark = pytest.mark.slow

CURVE = (0xD6, 0x27, 0x28)  # app.js: CURVE
WINDOW = (1280, 900)


def chromium() -> str:
    """The browser's path, installing Debian's package when it is missing."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    answer = None
    for attempt in ([], [["apt-get", "update"]]):  # stale package lists: update once, then retry
        for command in [*attempt, install]:
            try:
                answer = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"chromium is missing and `{' '.join(command)}` could not run: {exc}")
        if answer.returncode == 0 and shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip(f"chromium is missing and `apt-get install chromium` failed: {answer.stderr[-800:]}")


def browse(binary: str, profile: Path, url: str, *mode: str) -> subprocess.CompletedProcess:
    """One headless run; ``mode`` is --dump-dom or --screenshot=<file>. The virtual time
    budget lets the page's requests and first drawing finish before the dump or shot."""
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=8000", *mode, url,
    ]
    answer = subprocess.run(command, capture_output=True, timeout=180)
    assert answer.returncode == 0, answer.stderr.decode(errors="replace")[-3000:]
    return answer


def finished_sweep(running: Running, timeout: float = 90.0) -> dict:
    body = {
        "name": "lr-scan", "base": statquest_job() | {"stop": {"max_steps": 12}},
        "grid": {"learning_rate": [0.02, 0.1, 0.3]},
        "early_stopping": {"type": "successive_halving", "min_steps": 4, "reduction_factor": 3},
    }
    with httpx.Client(base_url=running.url, timeout=10) as client:
        sweep = client.post("/v1/sweeps", json=body).json()
        deadline = time.monotonic() + timeout
        while (sweep := client.get(f"/v1/sweeps/{sweep['id']}").json())["status"] != "finished":
            assert time.monotonic() < deadline, f"sweep still {sweep['status']}:\n{running.log.read_text()[-3000:]}"
            time.sleep(0.2)
    return sweep


def canvas_attributes(dom: str) -> dict[str, str]:
    tag = re.search(r"<canvas[^>]*id=\"ssr-chart\"[^>]*>", dom)
    assert tag, "no chart in the page"
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', tag.group(0)))


def test_the_page_lists_work_draws_the_ssr_curve_and_shows_a_leaderboard(
    start_up: Callable[..., Running], tmp_path: Path,
) -> None:
    binary = chromium()
    running = start_up(DESCENT_MAX_STEPS="20000000")  # a job that outlasts the browser (cancelled)
    job, history, _ = train_statquest(running)
    sweep = finished_sweep(running)
    page = f"{running.url}/#job/{job['id']}"

    dom = browse(binary, tmp_path / "profile", page, "--dump-dom").stdout.decode()
    jobs_table = dom[dom.index('id="jobs"'):dom.index("</table>", dom.index('id="jobs"'))]
    assert "statquest-b3" in jobs_table and "succeeded" in jobs_table
    assert "lr-scan" in dom, "the sweep is not listed"
    chart = canvas_attributes(dom)
    assert int(chart["points"]) == len(history["steps"]), chart
    assert 'id="job-plot"' in dom and re.search(r'id="job-plot"[^>]*src="blob:', dom), "no job picture"

    shot = tmp_path / "page.png"
    browse(binary, tmp_path / "profile", page, f"--screenshot={shot}")
    if os.environ.get("DESCENT_PAGE_SHOT"):  # a copy to look at
        shutil.copyfile(shot, os.environ["DESCENT_PAGE_SHOT"])
        Path(os.environ["DESCENT_PAGE_SHOT"]).with_suffix(".html").write_text(dom)
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    left, top, width, height = map(int, chart["rect"].split(","))
    assert top + height <= WINDOW[1], "the chart is below the fold"
    region = img[top:top + height, left:left + width]
    curve = (np.abs(region - np.array(CURVE) / 255).max(axis=2) < 0.08).sum()
    assert curve > 150, f"only {curve} pixels of the curve's colour in the chart"
    outside = img.copy()
    outside[top:top + height, left:left + width] = 1
    assert (outside < 0.5).any(axis=2).sum() > 2000, "nothing else on the page (text of the lists)"

    with httpx.Client(base_url=running.url, timeout=10) as client:  # work running: the page refreshes
        long = client.post("/v1/jobs", json=statquest_job() | {
            "name": "long-one", "trainable": None, "stop": {"max_steps": 20_000_000},
            "checkpoint_every": 1000}).json()
        # Running, with its first checkpoints committed (a worker commits fast chunks about once a second).
        while client.get(f"/v1/jobs/{long['id']}").json()["step"] < 2:
            time.sleep(0.1)
        live = browse(binary, tmp_path / "profile", running.url, "--dump-dom").stdout.decode()
        client.post(f"/v1/jobs/{long['id']}/cancel")
    assert "while work runs" in live and "long-one" in live and "running" in live
    assert int(canvas_attributes(live)["points"]) > 1, "the running job's curve is not drawn"

    board = browse(binary, tmp_path / "profile", f"{running.url}/#sweep/{sweep['id']}", "--dump-dom").stdout.decode()
    rows = board[board.index('id="leaderboard"'):board.index("</table>", board.index('id="leaderboard"'))]
    assert rows.count("<tr") == 1 + len(sweep["leaderboard"]) and "learning_rate=" in rows
    labels = re.findall(r'href="#job/([0-9a-f-]+)">([0-9a-f-]+)</a>', rows)
    assert len(labels) == len(sweep["leaderboard"]) and sweep["best"]["job_id"][-8:] in rows
    assert all(job_id.endswith(label) for job_id, label in labels)
    assert len({label for _, label in labels}) == len(labels), "members' labels alike (UUIDv7 time prefix)"


def test_with_auth_on_the_page_asks_for_an_api_key(start_up: Callable[..., Running], tmp_path: Path) -> None:
    binary = chromium()
    running = start_up(DESCENT_API_KEYS="alice:alice-key-0123456789")
    dom = browse(binary, tmp_path / "profile", running.url, "--dump-dom").stdout.decode()
    form = re.search(r"<form id=\"auth\"[^>]*>", dom)
    assert form and "hidden" not in form.group(0), "the key field is not shown"
    assert "this API needs a key" in dom and "waiting for an API key" in dom
