"""Sweep routes over HTTP: expansion into member jobs, all-or-nothing validation located at the
sweep field at fault, paging, cancel, and the counts/leaderboard derived from member rows.

No worker or scheduler runs here: members stay ``queued`` unless a test writes their rows as a
worker would (status, step, ssr, stop_reason). Unlike the other API tests these run on both
SQLite and PostgreSQL, since counts, ordering and keyset paging are computed in SQL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from services.db.models import Job
from services.db.session import session_scope
from services.examples import statquest_job
from tests.api.conftest import locs
from tests.conftest import database_of_kind

LEARNING_RATES = [0.05, 0.1, 0.2]
SEEDS = [1, 2]
SWEEP_OPERATIONS = {
    ("/v1/sweeps", "post"), ("/v1/sweeps", "get"),
    ("/v1/sweeps/{sweep_id}", "get"), ("/v1/sweeps/{sweep_id}/cancel", "post"),
    ("/v1/sweeps/{sweep_id}/plot.png", "get"),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Overrides the API tests' SQLite-only database: sweep summaries are SQL, so test both."""
    return database_of_kind(request)


def body(**changes: object) -> dict:
    """The StatQuest job swept over 3 learning rates x 2 seeds: six members."""
    return {"name": "lr-seed", "base": statquest_job(),
            "grid": {"learning_rate": list(LEARNING_RATES), "init.seed": list(SEEDS)}} | changes


def create(client: TestClient, sweep: dict) -> dict:
    answer = client.post("/v1/sweeps", json=sweep)
    assert answer.status_code == 201, answer.text
    return answer.json()


def members(client: TestClient, sweep_id: str) -> list[dict]:
    answer = client.get("/v1/jobs", params={"sweep_id": sweep_id, "limit": 500})
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def stored_specs(sweep_id: str) -> dict[str, dict]:
    """Each member's stored job document (the HTTP job read has no spec)."""
    with session_scope() as session:
        return dict(session.execute(select(Job.id, Job.spec).where(Job.sweep_id == sweep_id)).all())


def set_jobs(job_ids: list[str], **values: object) -> None:
    """Write member rows as a worker would have."""
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(**values))


def canonical(values: list[dict]) -> list[str]:
    return sorted(json.dumps(v, sort_keys=True) for v in values)


def assert_nothing_stored(client: TestClient) -> None:
    assert client.get("/v1/jobs").json()["items"] == []
    assert client.get("/v1/sweeps").json()["items"] == []


# --- submit ------------------------------------------------------------------------------------


def test_grid_sweep_answers_201_and_stores_one_job_per_grid_point(client: TestClient) -> None:
    sweep = create(client, body())
    assert sweep["id"] and sweep["name"] == "lr-seed" and sweep["status"] == "queued"
    assert (sweep["members"], sweep["counts"], sweep["stop_reasons"]) == (6, {"queued": 6}, {})
    assert sweep["paths"] == ["learning_rate", "init.seed"]
    assert (sweep["steps_done"], sweep["steps_planned"]) == (0, 6 * 1000)
    assert sweep["best"] is None and sweep["leaderboard"] == [] and sweep["early_stopping"] is None
    assert client.get(f"/v1/sweeps/{sweep['id']}").json() == sweep

    jobs = members(client, sweep["id"])
    assert len(jobs) == 6
    assert all(job["sweep_id"] == sweep["id"] and job["status"] == "queued" for job in jobs)
    expected = [{"learning_rate": lr, "init.seed": s} for lr, s in itertools.product(LEARNING_RATES, SEEDS)]
    assert canonical([job["sweep_values"] for job in jobs]) == canonical(expected)
    assert sorted(job["name"] for job in jobs) == sorted(f"lr-seed-{i}" for i in range(6))
    # Member i is grid point i (last key fastest), so names and values agree.
    by_name = {job["name"]: job["sweep_values"] for job in jobs}
    assert [by_name[f"lr-seed-{i}"] for i in range(6)] == expected

    specs = stored_specs(sweep["id"])
    assert set(specs) == {job["id"] for job in jobs}
    for job in jobs:
        spec = specs[job["id"]]
        # init.seed replaced the base's explicit parameters (one side of the union only).
        assert spec["init"] == {"seed": job["sweep_values"]["init.seed"]}
        assert spec["learning_rate"] == job["sweep_values"]["learning_rate"]
        assert spec["name"] == job["name"] and spec["stop"]["max_steps"] == 1000
    # One shared data set: every member references the same stored object.
    assert len({spec["data"]["dataset_id"] for spec in specs.values()}) == 1


def test_grid_times_random_draws_is_reproducible(client: TestClient) -> None:
    sweep = body(grid={"learning_rate": [0.1, 0.2]},
                 random={"n": 5, "seed": 7, "space": {"momentum": {"uniform": [0.0, 0.9]}}})
    first, second = create(client, sweep), create(client, sweep)
    assert first["id"] != second["id"]
    assert first["members"] == 10 and first["counts"] == {"queued": 10}
    assert first["paths"] == ["learning_rate", "momentum"]
    values = [job["sweep_values"] for job in members(client, first["id"])]
    again = [job["sweep_values"] for job in members(client, second["id"])]
    assert len(values) == 10 and canonical(values) == canonical(again)
    assert sorted(v["learning_rate"] for v in values) == [0.1] * 5 + [0.2] * 5
    momenta = {v["momentum"] for v in values}
    assert len(momenta) == 5 and all(0.0 <= m <= 0.9 for m in momenta)  # the same 5 draws per rate
    different_seed = create(client, sweep | {"random": sweep["random"] | {"seed": 8}})
    other = {job["sweep_values"]["momentum"] for job in members(client, different_seed["id"])}
    assert other != momenta


def test_early_stopping_is_echoed_back(client: TestClient) -> None:
    rule = {"type": "successive_halving", "min_steps": 10}
    sweep = create(client, body(early_stopping=rule))
    expected = rule | {"reduction_factor": 3}
    assert sweep["early_stopping"] == expected
    assert client.get(f"/v1/sweeps/{sweep['id']}").json()["early_stopping"] == expected
    listed = client.get("/v1/sweeps").json()["items"]
    assert [item["early_stopping"] for item in listed] == [expected]


# --- validation: all or nothing ----------------------------------------------------------------


@pytest.mark.parametrize(("grid", "loc"), [
    ({"learning_rate": [0.1, 0.2, -0.1]}, ["body", "grid", "learning_rate", 2]),
    ({"learning_rate": [0.1, 0.2, -0.1], "init.seed": [1, 2]}, ["body", "grid", "learning_rate", 2]),
    ({"learning_rate": [0.1], "init.seed": [1, -1]}, ["body", "grid", "init.seed", 1]),
    ({"stop.max_steps": [10, 2_000_000]}, ["body", "grid", "stop.max_steps", 1]),  # a settings limit
], ids=["lr", "lr-with-seed", "seed", "max-steps-limit"])
def test_a_bad_grid_value_is_located_at_its_index_and_nothing_is_stored(
    client: TestClient, grid: dict, loc: list,
) -> None:
    answer = client.post("/v1/sweeps", json=body(grid=grid))
    assert answer.status_code == 422, answer.text
    error = answer.json()["errors"][0]
    assert error["loc"] == loc and "member" in error["msg"]
    assert_nothing_stored(client)


@pytest.mark.parametrize(("base_changes", "grid", "loc"), [
    # A plain job with batch_size 50 on this 3-point data set is a 422 at body.batch_size.
    ({}, {"batch_size": [2, 50]}, ["body", "grid", "batch_size", 1]),
    # Member 1 has 2 inputs, the data set 1: the varied layers are at fault (its first width).
    ({"init": {"seed": 0}, "trainable": None}, {"architecture.layers": [[1, 2, 1], [2, 2, 1]]},
     ["body", "grid", "architecture.layers", 1, 0]),
], ids=["batch-size", "layers"])
def test_every_member_is_checked_against_a_referenced_dataset(
    client: TestClient, base_changes: dict, grid: dict, loc: list,
) -> None:
    dataset = client.post("/v1/datasets", json=statquest_job()["data"]).json()
    base = statquest_job() | {"data": {"dataset_id": dataset["id"]}} | base_changes
    answer = client.post("/v1/sweeps", json={"name": "ref", "base": base, "grid": grid})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["loc"] == loc
    assert_nothing_stored(client)


def test_a_bad_random_distribution_is_located_at_its_space_path(client: TestClient) -> None:
    sweep = body(random={"n": 20, "space": {"momentum": {"uniform": [0.5, 1.5]}}})  # momentum < 1
    answer = client.post("/v1/sweeps", json=sweep)
    assert answer.status_code == 422, answer.text
    error = answer.json()["errors"][0]
    assert error["loc"] == ["body", "random", "space", "momentum"] and "draw" in error["msg"]
    assert_nothing_stored(client)


def _without_learning_rate(base: dict) -> None:
    del base["learning_rate"]


def _over_step_limit(base: dict) -> None:
    base["stop"]["max_steps"] = 2_000_000  # the configured limit is 1,000,000


def _bad_trainable(base: dict) -> None:
    base["trainable"] = ["layers.9.bias"]


@pytest.mark.parametrize(("mutate", "loc"), [
    (_without_learning_rate, ["body", "base", "learning_rate"]),
    (_over_step_limit, ["body", "base", "stop", "max_steps"]),
    (_bad_trainable, ["body", "base", "trainable", 0]),
], ids=["missing-learning-rate", "max-steps-limit", "trainable"])
def test_a_base_error_is_located_in_the_base(client: TestClient, mutate: Callable[[dict], None], loc: list) -> None:
    sweep = body(grid={"init.seed": [1, 2]})
    mutate(sweep["base"])
    answer = client.post("/v1/sweeps", json=sweep)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["loc"] == loc
    assert_nothing_stored(client)


def test_a_path_varied_in_grid_and_random_is_refused(client: TestClient) -> None:
    sweep = body(random={"n": 2, "space": {"learning_rate": {"log_uniform": [0.01, 1.0]}}})
    answer = client.post("/v1/sweeps", json=sweep)
    assert answer.status_code == 422, answer.text
    error = answer.json()["errors"][0]
    assert error["loc"] == ["body", "random", "space", "learning_rate"]
    assert "learning_rate" in error["msg"] and "grid" in error["msg"]
    assert_nothing_stored(client)


def test_too_many_members_blames_the_grid_or_random_n(limited: Callable[..., TestClient]) -> None:
    client = limited(max_sweep_members=4)
    grid_too_big = client.post("/v1/sweeps", json=body())  # 3 x 2 = 6
    assert grid_too_big.status_code == 422 and locs(grid_too_big) == ["body.grid"]
    assert "6 members exceed the limit of 4" in grid_too_big.json()["errors"][0]["msg"]
    seeds = {"init.seed": {"randint": [0, 9]}}
    answer = client.post("/v1/sweeps", json=body(grid={"learning_rate": [0.1, 0.2]}, random={"n": 3, "space": seeds}))
    assert answer.status_code == 422 and locs(answer) == ["body.random.n"]
    assert_nothing_stored(client)
    assert create(client, body(grid={"learning_rate": [0.1, 0.2]}, random={"n": 2, "space": seeds}))["members"] == 4


# --- read, list --------------------------------------------------------------------------------


def test_unknown_sweep_is_404(client: TestClient) -> None:
    for answer in (client.get("/v1/sweeps/nope"), client.post("/v1/sweeps/nope/cancel")):
        assert answer.status_code == 404 and "nope" in answer.json()["detail"]


def test_listing_pages_newest_first_with_a_cursor(client: TestClient) -> None:
    ids = [create(client, body(name=f"s{i}", grid={"learning_rate": [0.1]}))["id"] for i in range(3)]
    first = client.get("/v1/sweeps", params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert [s["id"] for s in page["items"]] == ids[:0:-1] and page["next_cursor"]
    second = client.get("/v1/sweeps", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [s["id"] for s in second["items"]] == [ids[0]] and second["next_cursor"] is None
    assert all(s["leaderboard"] == [] and s["members"] == 1 for s in page["items"] + second["items"])


@pytest.mark.parametrize(("params", "loc"), [
    ({"cursor": "not-a-cursor"}, "query.cursor"),
    ({"limit": 501}, "query.limit"),
    ({"limit": 0}, "query.limit"),
])
def test_bad_listing_parameters_are_422(client: TestClient, params: dict, loc: str) -> None:
    answer = client.get("/v1/sweeps", params=params)
    assert answer.status_code == 422 and locs(answer) == [loc]


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_cancels_every_queued_member_and_a_second_cancel_is_409(client: TestClient) -> None:
    sweep = create(client, body())
    other = client.post("/v1/jobs", json=statquest_job()).json()  # not a member: untouched
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["counts"] == {"cancelled": 6}
    jobs = members(client, sweep["id"])
    assert len(jobs) == 6 and all(j["status"] == "cancelled" and j["finished_at"] for j in jobs)
    assert client.get(f"/v1/jobs/{other['id']}").json()["status"] == "queued"
    again = client.post(f"/v1/sweeps/{sweep['id']}/cancel")  # as a job's second cancel
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert client.get(f"/v1/sweeps/{sweep['id']}").json()["status"] == "cancelled"


def test_cancel_requests_a_stop_of_running_members(client: TestClient) -> None:
    sweep = create(client, body())
    ids = [job["id"] for job in members(client, sweep["id"])]
    set_jobs(ids[:2], status="running", step=30)
    answer = client.post(f"/v1/sweeps/{sweep['id']}/cancel").json()
    assert answer["counts"] == {"running": 2, "cancelled": 4} and answer["status"] == "cancelled"
    with session_scope() as session:
        flags = dict(session.execute(select(Job.id, Job.cancel_requested).where(Job.sweep_id == sweep["id"])).all())
    assert {i for i, flag in flags.items() if flag} == set(ids[:2])


def test_cancel_of_a_finished_sweep_is_409(client: TestClient) -> None:
    sweep = create(client, body())
    set_jobs([job["id"] for job in members(client, sweep["id"])], status="succeeded", step=1000,
             ssr=1.0, stop_reason="max_steps")
    answer = client.post(f"/v1/sweeps/{sweep['id']}/cancel")
    assert answer.status_code == 409 and "finished" in answer.json()["detail"]
    after = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert after["status"] == "finished" and after["counts"] == {"succeeded": 6}


# --- counts, status, leaderboard ---------------------------------------------------------------


def test_diverged_members_rank_after_the_others_and_are_never_best(client: TestClient) -> None:
    """A diverged member keeps its last finite SSR, often step 0's: lower than a slow member's."""
    sweep = create(client, body(grid={"learning_rate": [0.01, 0.02, 0.05, 0.1]}))
    ids = [j["id"] for j in members(client, sweep["id"])]
    set_jobs(ids[:2], status="diverged", step=0, ssr=0.5, stop_reason="non_finite")
    set_jobs(ids[2:3], status="succeeded", step=10, ssr=2.0, stop_reason="max_steps")
    set_jobs(ids[3:], status="succeeded", step=10, ssr=3.0, stop_reason="max_steps")
    read = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert [e["job_id"] for e in read["leaderboard"]] == [ids[2], ids[3], *sorted(ids[:2])]
    assert read["best"]["job_id"] == ids[2]
    set_jobs(ids[2:], status="diverged", step=0, ssr=0.5, stop_reason="non_finite")
    everyone = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert everyone["best"] is None and len(everyone["leaderboard"]) == 4


def test_leaderboard_ranks_members_with_an_ssr_and_counts_reflect_the_rows(client: TestClient) -> None:
    sweep = create(client, body(grid={"learning_rate": [0.01, 0.02, 0.05, 0.1], "init.seed": [1, 2, 3]}))
    jobs = members(client, sweep["id"])
    assert len(jobs) == 12
    # Eleven members finish with distinct SSRs (in an order unrelated to creation); one fails.
    ssrs = dict(zip((j["id"] for j in jobs[:11]), [5.0, 0.3, 9.0, 0.1, 7.5, 2.0, 0.2, 4.0, 8.0, 1.0, 6.0]))
    for n, (job_id, ssr) in enumerate(ssrs.items()):
        reason = "early_stopped" if n < 4 else "max_steps"
        set_jobs([job_id], status="succeeded", ssr=ssr, step=10 * (n + 1), stop_reason=reason)
    set_jobs([jobs[11]["id"]], status="failed", step=0, ssr=None, stop_reason=None)

    read = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert read["status"] == "finished"
    assert read["counts"] == {"succeeded": 11, "failed": 1}
    assert read["stop_reasons"] == {"early_stopped": 4, "max_steps": 7}
    assert read["steps_done"] == sum(10 * (n + 1) for n in range(11))
    board = read["leaderboard"]
    assert [e["ssr"] for e in board] == sorted(ssrs.values())[:10]
    values = {j["id"]: j["sweep_values"] for j in jobs}
    assert all(e["values"] == values[e["job_id"]] and e["status"] == "succeeded" for e in board)
    assert jobs[11]["id"] not in {e["job_id"] for e in board}
    best_id = min(ssrs, key=ssrs.get)
    assert read["best"] == board[0] and read["best"]["job_id"] == best_id
    assert read["best"]["values"] == values[best_id] and read["best"]["ssr"] == 0.1
    listed = client.get("/v1/sweeps").json()["items"][0]
    assert listed["best"] == read["best"] and listed["leaderboard"] == []


def test_status_follows_the_members(client: TestClient) -> None:
    sweep = create(client, body())
    ids = [job["id"] for job in members(client, sweep["id"])]

    def read() -> dict:
        return client.get(f"/v1/sweeps/{sweep['id']}").json()

    assert read()["status"] == "queued"
    set_jobs(ids[:1], status="running", step=0)
    assert (read()["status"], read()["counts"]) == ("running", {"running": 1, "queued": 5})
    set_jobs(ids[:1], status="queued", step=40)  # parked at a rung: back in the queue with steps done
    assert (read()["status"], read()["steps_done"]) == ("running", 40)
    set_jobs(ids[:1], status="succeeded", step=0)  # one finished, the rest never started
    assert read()["status"] == "running"
    set_jobs(ids, status="diverged", step=3)
    final = read()
    assert final["status"] == "finished" and final["counts"] == {"diverged": 6} and final["steps_done"] == 18
    assert final["best"] is None and final["leaderboard"] == []


# --- OpenAPI -----------------------------------------------------------------------------------


def test_openapi_documents_the_sweep_operations_with_an_example(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operations = {(path, method) for path, item in schema["paths"].items() for method in item
                  if path.startswith("/v1/sweeps")}
    assert operations == SWEEP_OPERATIONS
    assert schema["paths"]["/v1/sweeps"]["post"]["responses"].keys() >= {"201", "422"}
    assert schema["paths"]["/v1/sweeps/{sweep_id}/cancel"]["post"]["responses"].keys() >= {"200", "404", "409"}
    example = schema["components"]["schemas"]["SweepCreate"]["examples"][0]
    assert example["base"]["learning_rate"] == 0.1 and example["grid"] == {"learning_rate": [0.05, 0.1, 0.2]}
    # The documented example is itself a valid request.
    assert create(client, example)["members"] == 6
