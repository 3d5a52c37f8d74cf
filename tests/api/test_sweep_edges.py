"""Sweep submissions at the edges of the limits: each refusal is a 4xx located at the sweep field
that causes it (never a 500, and a 429 only when a retry could succeed), and a second cancel is
a 409 as a job's is.

StatQuest's job costs 7 parameters x 3 points = 21 per step, 21,000 at its 1000 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from services.db.models import Job
from services.db.session import session_scope
from services.examples import statquest_job

SPEED = {"type": "successive_halving", "reduction_factor": 2}


def sweep(base: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"name": "edge", "base": base or statquest_job()} | fields


def seeded(**changes: Any) -> dict[str, Any]:
    """StatQuest with a seed init and every parameter trainable, so its layers may vary."""
    return statquest_job() | {"init": {"seed": 0}, "trainable": None} | changes


def without_stop() -> dict[str, Any]:
    """StatQuest with no ``stop``: the default 1000 steps."""
    return {key: value for key, value in statquest_job().items() if key != "stop"}


def refused(client: TestClient, body: dict[str, Any], status: int = 422) -> dict[str, Any]:
    """The first field error of a refusal with ``status``; nothing may have been stored."""
    answer = client.post("/v1/sweeps", json=body)
    assert answer.status_code == status, answer.text
    assert client.get("/v1/sweeps").json()["items"] == []
    return answer.json()["errors"][0]


# --- finding 2: a sweep larger than the tenant's whole queue --------------------------------------


@pytest.mark.parametrize(("fields", "loc"), [
    ({"grid": {"learning_rate": [0.1, 0.2, 0.3, 0.4]}}, ["body", "grid"]),
    ({"grid": {"learning_rate": [0.1, 0.2]}, "random": {"n": 2, "space": {"momentum": {"uniform": [0, 0.5]}}}},
     ["body", "random", "n"]),
], ids=["grid", "random-n"])
def test_a_sweep_larger_than_the_queued_limit_is_422_at_its_size(
    limited: Callable[..., TestClient], fields: dict, loc: list,
) -> None:
    client = limited(tenant_max_queued=3)
    answer = client.post("/v1/sweeps", json=sweep(**fields))
    assert answer.status_code == 422 and "retry-after" not in answer.headers, answer.text
    error = answer.json()["errors"][0]
    assert error["loc"] == loc
    assert "4 members exceed the limit of 3 queued jobs per tenant" in error["msg"]


def test_a_sweep_that_fits_an_empty_queue_is_429_while_the_queue_is_full(limited: Callable[..., TestClient]) -> None:
    client = limited(tenant_max_queued=3)
    for _ in range(2):
        assert client.post("/v1/jobs", json=statquest_job()).status_code == 201
    answer = client.post("/v1/sweeps", json=sweep(grid={"learning_rate": [0.1, 0.2]}))
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0, answer.text
    assert "retry" in answer.json()["detail"]


# --- finding 3: early_stopping.min_steps ----------------------------------------------------------


def test_min_steps_above_the_max_steps_setting_is_refused(client: TestClient) -> None:
    body = sweep(grid={"learning_rate": [0.1, 0.2]}, early_stopping=SPEED | {"min_steps": 2**31 - 1})
    error = refused(client, body)
    assert error["loc"] == ["body", "early_stopping", "min_steps"]
    assert error["msg"] == "exceeds the limit of 1000000"


@pytest.mark.parametrize("min_steps", [20, 21, 1000])
def test_min_steps_no_member_trains_past_is_refused_naming_the_largest_max_steps(
    client: TestClient, min_steps: int,
) -> None:
    body = sweep(grid={"stop.max_steps": [10, 20]}, early_stopping=SPEED | {"min_steps": min_steps})
    error = refused(client, body)
    assert error["loc"] == ["body", "early_stopping", "min_steps"]
    assert "not below any member's stop.max_steps (the largest is 20)" in error["msg"]


def test_min_steps_below_some_members_max_steps_is_accepted(client: TestClient) -> None:
    body = sweep(grid={"stop.max_steps": [10, 20]}, early_stopping=SPEED | {"min_steps": 19})
    answer = client.post("/v1/sweeps", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["early_stopping"]["min_steps"] == 19 and answer.json()["members"] == 2


# --- finding 5: the cost limit is blamed on what drives it ----------------------------------------


@pytest.mark.parametrize(("body", "loc", "member"), [
    # One grid value makes one member cost 2.1e6: that value is at fault, not the base.
    (sweep(grid={"stop.max_steps": [10, 100_000]}), ["body", "grid", "stop.max_steps", 1], "member 1: "),
    (sweep(seeded(), grid={"architecture.layers": [[1, 2, 1], [1, 200, 1]]}),
     ["body", "grid", "architecture.layers", 1], "member 1: "),
    (sweep(random={"n": 2, "space": {"stop.max_steps": {"choice": [100_000]}}}),
     ["body", "random", "space", "stop.max_steps"], "member 0 (draw 0): "),
    # Five members of 21,000 each (the base has no stop: 1000 steps); four would fit.
    (sweep(without_stop(), grid={"learning_rate": [0.1, 0.2, 0.3, 0.4, 0.5]}), ["body", "grid"], ""),
    (sweep(grid={"learning_rate": [0.1]}, random={"n": 5, "space": {"momentum": {"uniform": [0, 0.5]}}}),
     ["body", "random", "n"], ""),
    # Not even one member fits, and nothing that sets the cost is varied: the base's steps.
    (sweep(statquest_job() | {"stop": {"max_steps": 100_000}}, grid={"learning_rate": [0.1, 0.2]}),
     ["body", "base", "stop", "max_steps"], ""),
], ids=["grid-steps", "grid-layers", "random-steps", "grid-count", "random-count", "base-steps"])
def test_the_cost_limit_is_located_at_the_field_that_drives_it(
    limited: Callable[..., TestClient], body: dict, loc: list, member: str,
) -> None:
    client = limited(tenant_max_cost=1e5)
    error = refused(client, body)
    assert error["loc"] == loc
    assert error["msg"].startswith(member + "estimated training cost") and "exceeds the limit of 1e+05" in error["msg"]


def test_a_base_without_stop_is_not_blamed_for_its_steps(limited: Callable[..., TestClient]) -> None:
    client = limited(tenant_max_cost=1e4)  # one member alone (21,000 at the default 1000 steps) is over
    error = refused(client, sweep(without_stop(), grid={"learning_rate": [0.1, 0.2]}))
    assert error["loc"] == ["body", "base"] and "estimated training cost 4.2e+04" in error["msg"]


# --- finding 9: at most 64 varied paths, grid and random together ---------------------------------


def test_grid_and_random_paths_are_limited_together(client: TestClient) -> None:
    grid = {f"p{i}": [1] for i in range(33)}
    space = {f"q{i}": {"choice": [1]} for i in range(32)}
    error = refused(client, sweep(grid=grid, random={"n": 1, "space": space}))
    assert error["loc"] == ["body", "random", "space"]
    assert "33 grid paths + 32 random paths: 65 varied paths exceed the limit of 64" in error["msg"]
    # 64 in all pass the count, and the first path is then judged on its own.
    del grid["p32"]
    assert refused(client, sweep(grid=grid, random={"n": 1, "space": space}))["loc"] == ["body", "grid", "p0"]


# --- finding 10: cancel twice ---------------------------------------------------------------------


def test_a_second_cancel_is_409_and_a_finished_sweep_stays_409(client: TestClient) -> None:
    created = client.post("/v1/sweeps", json=sweep(grid={"learning_rate": [0.1, 0.2]})).json()
    assert client.post(f"/v1/sweeps/{created['id']}/cancel").status_code == 200
    again = client.post(f"/v1/sweeps/{created['id']}/cancel")
    assert again.status_code == 409 and again.json()["detail"] == f"sweep {created['id']} is already cancelled"
    assert client.get(f"/v1/sweeps/{created['id']}").json()["status"] == "cancelled"

    finished = client.post("/v1/sweeps", json=sweep(grid={"learning_rate": [0.1, 0.2]})).json()
    with session_scope() as session:
        session.execute(update(Job).where(Job.sweep_id == finished["id"])
                        .values(status="succeeded", step=1000, ssr=1.0, stop_reason="max_steps"))
    answer = client.post(f"/v1/sweeps/{finished['id']}/cancel")
    assert answer.status_code == 409 and answer.json()["detail"] == f"sweep {finished['id']} is already finished"


# --- finding 13: an unknown varied path is refused at the path ------------------------------------


@pytest.mark.parametrize(("fields", "loc", "message"), [
    ({"grid": {"nope.x": [1]}}, ["body", "grid", "nope.x"], "unknown field 'nope'; known: architecture, "),
    ({"grid": {"stop.nope": [1]}}, ["body", "grid", "stop.nope"], "unknown field 'nope' in 'stop'; known: max_steps"),
    ({"grid": {"data.z": [[[1.0]]]}}, ["body", "grid", "data.z"], "unknown field 'z' in 'data'; known: dataset_id, x"),
    ({"random": {"n": 1, "space": {"init.bogus": {"randint": [0, 1]}}}}, ["body", "random", "space", "init.bogus"],
     "unknown field 'bogus' in 'init'; known: parameters, seed"),
], ids=["top", "nested", "union", "random"])
def test_an_unknown_varied_path_is_refused_at_the_path(
    client: TestClient, fields: dict, loc: list, message: str,
) -> None:
    error = refused(client, sweep(**fields))
    assert error["loc"] == loc and error["msg"].startswith(message), error


# --- varied layers that do not fit the data: the grid value is at fault, not the base ------------


@pytest.mark.parametrize("stored", [False, True], ids=["inline", "dataset_id"])
@pytest.mark.parametrize(("layers", "loc", "said"), [
    ([[1, 3, 1], [2, 3, 1]], ["body", "grid", "architecture.layers", 1, 0], "layers[0] is 2"),
    ([[1, 3, 1], [1, 3, 2]], ["body", "grid", "architecture.layers", 1, 2], "layers[-1] is 2"),
])
def test_varied_layers_that_do_not_fit_the_data_are_blamed_at_the_grid_value(
    client: TestClient, stored: bool, layers: list[list[int]], loc: list[Any], said: str,
) -> None:
    base = seeded()
    if stored:
        data = client.post("/v1/datasets", json=base["data"]).json()
        base["data"] = {"dataset_id": data["id"]}
    error = refused(client, sweep(base, grid={"architecture.layers": layers}))
    assert error["loc"] == loc and error["msg"].startswith("member 1: ") and said in error["msg"], error


@pytest.mark.parametrize(("varied", "values", "loc"), [
    ("data.x", [[[0.0], [0.5], [1.0]], [[0.0]]], ["body", "grid", "data.x", 1]),
    ("data.y", [[[0.0], [1.0], [0.0]], [[0.0]] * 4], ["body", "grid", "data.y", 1]),
])
def test_varied_data_rows_that_do_not_match_the_other_side_are_blamed_at_the_grid_value(
    client: TestClient, varied: str, values: list[Any], loc: list[Any],
) -> None:
    """The base is valid: a member whose x (or y) has another row count than the base's y (or x)
    is its grid value's fault, not the base's ``data.y``."""
    error = refused(client, sweep(grid={varied: values}))
    assert error["loc"] == loc and error["msg"].startswith("member 1: ") and "rows but y has" in error["msg"], error
