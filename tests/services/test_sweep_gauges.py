"""Which sweeps get Prometheus series, and under which label (services/metrics_db.py,
services/db/gauges.py), on both databases.

- Ids are UUIDv7: sweeps made within a minute share their first 8 hex digits, so the label
  takes the id's random tail; two sweeps of one name made back to back keep two series.
- At most ``metrics_max_sweeps`` sweeps get series: running ones first, so short sweeps that
  finish meanwhile cannot push a long-running one (the one DescentSweepStalled watches) out.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from services import metrics_export
from services.config import Settings
from services.db import gauges
from services.db.models import Sweep, utcnow
from services.db.repository import new_id
from services.db.scheduling import db_now
from services.db.session import session_scope
from services.examples import statquest_job
from services.metrics_db import _sweep_families, sweep_label
from services.sweep_spec import SweepCreate
from services.sweeps import submit_sweep


@pytest.fixture(autouse=True)
def _read_at_every_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESCENT_METRICS_MAX_AGE", "0")


def sweep(name: str, rates: tuple[float, ...]) -> str:
    base = statquest_job() | {"stop": {"max_steps": 100}}
    return submit_sweep(SweepCreate.model_validate({"name": name, "base": base,
                                                    "grid": {"learning_rate": list(rates)}})).id


def series(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics_export.render().decode()
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


# --- the label ------------------------------------------------------------------------------


def test_two_sweeps_of_one_name_made_back_to_back_keep_their_own_series(configured: Settings) -> None:
    first, second = sweep("lr-scan", (0.1, 0.2, 0.3)), sweep("lr-scan", (0.1,))
    assert first[:8] == second[:8]  # UUIDv7: the same millisecond-timestamp prefix
    one, two = sweep_label("lr-scan", first), sweep_label("lr-scan", second)
    assert one != two
    jobs = series("descent_sweep_jobs")
    assert jobs[(("status", "queued"), ("sweep", one))] == 3
    assert jobs[(("status", "queued"), ("sweep", two))] == 1
    assert {dict(k)["sweep"] for k in series("descent_sweep_progress_ratio")} == {one, two}


def test_the_label_is_the_name_and_the_ids_random_tail() -> None:
    ids = [new_id() for _ in range(1000)]  # made within a few milliseconds
    assert len({i[:8] for i in ids}) < 5
    labels = {sweep_label("same", i) for i in ids}
    assert len(labels) == len(ids)
    assert sweep_label("lr-scan", "01a22a44-c4e9-7552-b6c0-5539e3ec630b") == "lr-scan · 5539e3ec630b"


def test_sweeps_whose_labels_collide_are_never_merged() -> None:
    """Two tails alike (a chance of 2^-48 a pair): the second sweep is labelled by its whole id."""
    a, b = "01a22a44-0000-7000-8000-5539e3ec630b", "01a22a45-1111-7111-9111-5539e3ec630b"
    states = [gauges.SweepState(a, "lr", 2, {"running": 2}, 10, 100),
              gauges.SweepState(b, "lr", 1, {"failed": 1}, 5, 5)]
    progress = {s.labels["sweep"]: s.value for family in _sweep_families(states) for s in family.samples
                if s.name == "descent_sweep_progress_ratio"}
    assert progress == {"lr · 5539e3ec630b": 0.1, f"lr · {b}": 1.0}


# --- which sweeps are watched ---------------------------------------------------------------


def test_a_long_running_sweep_outlasts_newer_finished_sweeps(configured: Settings) -> None:
    """100 (the limit) newer sweeps that finished within the window: the older running sweep
    keeps its series; finished ones fill the rest, newest first."""
    long = sweep("long", (0.1,))
    now = utcnow()
    with session_scope() as session:
        session.execute(update(Sweep).where(Sweep.id == long).values(created_at=now - timedelta(hours=2)))
        session.add_all([Sweep(id=new_id(), tenant_id="default", name=f"short{i}", spec={}, paths=[], members=1,
                               planned_steps=1, created_at=now - timedelta(minutes=10) + timedelta(seconds=i),
                               finished_at=now - timedelta(minutes=5)) for i in range(configured.metrics_max_sweeps)])
    with session_scope() as session:
        watched = gauges.watched_sweeps(session, db_now(session), configured.metrics_sweep_window,
                                        configured.metrics_max_sweeps)
    names = [state.name for state in watched]
    assert len(names) == configured.metrics_max_sweeps
    assert names[0] == "long"
    assert names[1:] == [f"short{i}" for i in reversed(range(1, configured.metrics_max_sweeps))]  # short0 is out
    labels = {dict(k)["sweep"] for k in series("descent_sweep_progress_ratio")}
    assert sweep_label("long", long) in labels and len(labels) == configured.metrics_max_sweeps


def test_running_sweeps_come_first_then_finished_ones_newest_first(configured: Settings) -> None:
    old, middle, new = (sweep(name, (0.1,)) for name in ("old", "middle", "new"))
    now = utcnow()
    with session_scope() as session:
        for sweep_id, age in ((old, 30), (middle, 20), (new, 10)):
            session.execute(update(Sweep).where(Sweep.id == sweep_id)
                            .values(created_at=now - timedelta(minutes=age)))
        session.execute(update(Sweep).where(Sweep.id.in_([middle, new])).values(finished_at=now))

    def watched(limit: int) -> list[str]:
        with session_scope() as session:
            return [s.name for s in gauges.watched_sweeps(session, db_now(session), 900.0, limit)]

    assert watched(3) == ["old", "new", "middle"]
    assert watched(2) == ["old", "new"]
    assert watched(1) == ["old"]
