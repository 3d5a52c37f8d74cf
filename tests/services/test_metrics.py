"""Metrics in one process: the database gauges against rows written as workers would, on both
databases (medians and counts are SQL), the request labels, the names the dashboards use, and
the engine time per update of a pack that stops early.

The multiprocess side (recycled prefork children, two API processes) is tested with real
processes in tests/e2e/test_metrics_stack.py.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from api.main import create_app
from services import engine, metrics_export, training
from services.config import Settings
from services.db.models import Job, Sweep, Worker, utcnow
from services.db.session import session_scope
from services.examples import statquest_job
from services.jobs import submit_job
from services.metrics_db import sweep_label
from services.spec import JobCreate
from services.sweep_spec import SweepCreate
from services.sweeps import submit_sweep


@pytest.fixture(autouse=True)
def _read_at_every_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests compare a scrape with rows just written: no reading from a scrape ago."""
    monkeypatch.setenv("DESCENT_METRICS_MAX_AGE", "0")


def scrape(text: str | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one exposition."""
    text = text if text is not None else metrics_export.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sweep(name: str = "lr", rates: tuple[float, ...] = (0.01, 0.1, 0.2, 0.3, 0.5), steps: int = 100) -> str:
    base = statquest_job() | {"stop": {"max_steps": steps}}
    return submit_sweep(SweepCreate.model_validate(
        {"name": name, "base": base, "grid": {"learning_rate": list(rates)}})).id


def set_members(sweep_id: str, rows: list[dict]) -> None:
    """Write member rows as workers would have (status, step, ssr)."""
    with session_scope() as session:
        ids = [j.id for j in session.query(Job).filter(Job.sweep_id == sweep_id).order_by(Job.id)]
        for job_id, values in zip(ids, rows):
            session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_sweep_gauges_follow_the_members(configured: Settings) -> None:
    sweep_id = sweep()
    set_members(sweep_id, [
        {"status": "succeeded", "step": 100, "ssr": 4.0},
        {"status": "succeeded", "step": 40, "ssr": 1.0, "stop_reason": "min_step_size"},
        {"status": "running", "step": 30, "ssr": 3.0},
        {"status": "diverged", "step": 7, "ssr": None},
        {"status": "queued", "step": 0, "ssr": 2.0},
    ])
    got, key = scrape(), (("sweep", sweep_label("lr", sweep_id)),)
    assert got[("descent_sweep_best_ssr", key)] == 1.0
    assert got[("descent_sweep_median_ssr", key)] == statistics.median([4.0, 1.0, 3.0, 2.0])
    # finished members count as done (3 x 100), the others by their step (30 + 0), of 5 x 100
    assert got[("descent_sweep_progress_ratio", key)] == pytest.approx((300 + 30) / 500)
    assert got[("descent_sweep_diverged_ratio", key)] == pytest.approx(1 / 5)
    jobs = {dict(labels)["status"]: v for (name, labels), v in got.items()
            if name == "descent_sweep_jobs" and dict(labels)["sweep"] == key[0][1]}
    assert jobs == {"queued": 1, "running": 1, "succeeded": 2, "diverged": 1, "failed": 0, "cancelled": 0}
    assert got[("descent_jobs", (("status", "succeeded"),))] == 2
    assert got[("descent_database_up", ())] == 1


def test_median_of_an_odd_count_is_the_middle_member(configured: Settings) -> None:
    sweep_id = sweep(rates=(0.1, 0.2, 0.3))
    set_members(sweep_id, [{"ssr": 9.0}, {"ssr": 0.5}, {"ssr": 2.0}])
    assert scrape()[("descent_sweep_median_ssr", (("sweep", sweep_label("lr", sweep_id)),))] == 2.0


def test_only_recent_sweeps_have_series_and_at_most_the_limit(configured: Settings, monkeypatch) -> None:
    old, *recent = [sweep(name=f"s{i}", rates=(0.1,)) for i in range(4)]
    with session_scope() as session:
        session.execute(update(Sweep).where(Sweep.id == old).values(finished_at=utcnow() - timedelta(hours=1)))
        session.execute(update(Sweep).where(Sweep.id == recent[0]).values(finished_at=utcnow()))
    labels = {dict(lab)["sweep"] for name, lab in scrape() if name == "descent_sweep_progress_ratio"}
    assert labels == {sweep_label(f"s{i}", sid) for i, sid in enumerate(recent, start=1)}
    configured.metrics_max_sweeps = 2
    labels = {dict(lab)["sweep"] for name, lab in scrape() if name == "descent_sweep_progress_ratio"}
    assert labels == {sweep_label("s3", recent[2]), sweep_label("s2", recent[1])}  # the newest two


def test_queue_workers_and_scheduler_gauges(configured: Settings) -> None:
    submit_job(JobCreate.model_validate(statquest_job()))
    now = utcnow()
    with session_scope() as session:
        session.add_all([
            Worker(name="a", queues="cpu", hostname="h", pid=1, started_at=now, seen_at=now),
            Worker(name="b", queues="cpu,gpu", hostname="h", pid=2, started_at=now, seen_at=now),
            Worker(name="dead", queues="gpu", hostname="h", pid=3, started_at=now, seen_at=now - timedelta(hours=1)),
        ])
    got = scrape()
    assert got[("descent_workers", (("queue", "cpu"),))] == 2
    assert got[("descent_workers", (("queue", "gpu"),))] == 1
    assert got[("descent_queue_jobs", (("queue", "cpu"),))] == 1
    assert got[("descent_queue_jobs", (("queue", "gpu"),))] == 0
    assert 0 <= got[("descent_queue_oldest_seconds", (("queue", "cpu"),))] < 60
    assert not any(name == "descent_scheduler_last_action_age_seconds" for name, _ in got)  # none acted yet


def test_a_scrape_answers_with_the_database_down(configured: Settings, tmp_path) -> None:
    configured.database_url = f"sqlite:///{tmp_path}/missing/dir/x.db"
    from services.db.session import reset_engine

    reset_engine()
    got = scrape()
    assert got[("descent_database_up", ())] == 0
    assert not any(name == "descent_jobs" for name, _ in got)


def test_requests_are_labelled_by_route_template(configured: Settings) -> None:
    client = TestClient(create_app(configured))
    before = scrape(client.get("/metrics").text)
    client.get("/v1/jobs/no-such-job")
    client.get("/v1/jobs/another-one")
    client.get("/no/such/route")
    client.post("/v1/jobs", json={"name": "x"})
    after = scrape(client.get("/metrics").text)

    def grew(method: str, route: str, code: str) -> float:
        key = ("descent_http_requests_total", (("code", code), ("method", method), ("route", route)))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("GET", "/v1/jobs/{job_id}", "404") == 2
    assert grew("GET", "unmatched", "404") == 1
    assert grew("POST", "/v1/jobs", "422") == 1
    assert not any("no-such-job" in str(labels) for _, labels in after)


def test_submits_and_finishes_are_counted_once_committed(configured: Settings) -> None:
    client = TestClient(create_app(configured))
    before = scrape()
    job = client.post("/v1/jobs", json=statquest_job()).json()
    sweep_id = sweep(rates=(0.1, 0.2, 0.3))
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert client.post(f"/v1/sweeps/{sweep_id}/cancel").status_code == 200
    after = scrape()
    assert after[("descent_jobs_submitted_total", ())] - before[("descent_jobs_submitted_total", ())] == 4
    cancelled = ("descent_jobs_finished_total", (("status", "cancelled"),))
    assert after[cancelled] - before[cancelled] == 4


def test_a_scrape_shows_the_reading_taken_after_the_previous_one(configured: Settings) -> None:
    configured.metrics_max_age = 60
    jobs = ("descent_jobs", (("status", "queued"),))
    assert scrape()[jobs] == 0  # the first scrape reads the database itself
    submit_job(JobCreate.model_validate(statquest_job()))
    stale = scrape()  # answers at once with the first reading, and starts the next one
    assert stale[jobs] == 0 and stale[("descent_database_gauges_age_seconds", ())] >= 0
    deadline = time.monotonic() + 10
    while scrape()[jobs] != 1:
        assert time.monotonic() < deadline, "the background reading never landed"
        time.sleep(0.05)
    configured.metrics_max_age = 0
    submit_job(JobCreate.model_validate(statquest_job()))
    assert scrape()[jobs] == 2  # with max age 0 every scrape reads the database


def test_pack_step_time_is_per_update_run_when_every_member_stops_early() -> None:
    """The engine returns as soon as every member has stopped: a slice asked for 100 updates
    that ran 5 took the time of 5, and the slices after it would run none. One observation,
    of that slice's time per update (not per update asked for, 20x too fast)."""
    arch = engine.Architecture((1, 2, 1), "softplus")
    config = engine.PackConfig.single(learning_rate=0.01, max_steps=5)
    params = {k: v[None] for k, v in engine.init_parameters(arch, seed=0).items()}
    x = np.linspace(0.0, 1.0, 3).reshape(-1, 1)
    y = np.sin(x)
    pack = training.Pack([], np, arch, config, engine.init_state(np, arch, config, params, x, y), x, y)

    def observed() -> tuple[float, float]:
        return tuple(REGISTRY.get_sample_value(f"descent_pack_step_seconds_{s}", {"queue": "cpu"}) or 0.0
                     for s in ("count", "sum"))

    before = observed()
    started = time.perf_counter()
    state, history = training._train_slices(pack, 100_000)  # first slice: pack.slice, 100 updates
    elapsed = time.perf_counter() - started

    assert int(state.step[0]) == 5 and history.shape[1] >= 5
    count, total = observed()
    assert count - before[0] == 1
    assert total - before[1] > elapsed / 5 / 10  # the engine's time for 5 updates, most of the elapsed
