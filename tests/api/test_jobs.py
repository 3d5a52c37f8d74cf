"""Job routes: the happy paths, the state machine of cancel, and 404 for unknown ids."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from services.examples import STATQUEST_B3, STATQUEST_SSR0, STATQUEST_UPDATES, statquest_job, statquest_named
from tests.api.conftest import locs


def submit(client: TestClient, **changes: object) -> dict:
    answer = client.post("/v1/jobs", json=statquest_job() | changes)
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_submit_answers_201_with_a_queued_job(client: TestClient) -> None:
    job = submit(client)
    assert job["status"] == "queued" and job["step"] == 0 and job["name"] == "statquest-b3"
    assert job["queue_workers"] is None  # only reads of jobs count the workers of its queue
    assert client.get(f"/v1/jobs/{job['id']}").json() == job | {"queue_workers": 0}


def test_a_queued_job_says_how_many_live_workers_serve_its_queue(client: TestClient) -> None:
    """A gpu job with no gpu worker running waits, queued, until one starts: the read says so
    (0), which tells it from a job waiting its turn behind others (workers > 0)."""
    from sqlalchemy import update

    from services.db import scheduling
    from services.db.models import Worker
    from services.db.session import session_scope

    cpu, gpu = submit(client)["id"], submit(client, device="gpu")["id"]
    with session_scope() as session:
        scheduling.register_worker(session, "cpu-1", "cpu", "host", 1)
        scheduling.register_worker(session, "both", "cpu,gpu", "host", 2)
        scheduling.register_worker(session, "gone", "gpu", "host", 3)
        session.execute(update(Worker).where(Worker.name == "gone")  # its lease long lapsed
                        .values(seen_at=scheduling.db_now(session) - timedelta(hours=1)))
    assert client.get(f"/v1/jobs/{cpu}").json()["queue_workers"] == 2
    assert client.get(f"/v1/jobs/{gpu}").json()["queue_workers"] == 1
    with session_scope() as session:
        scheduling.forget_worker(session, "both")
    listed = {job["id"]: job["queue_workers"] for job in client.get("/v1/jobs").json()["items"]}
    assert listed == {cpu: 1, gpu: 0}
    client.post(f"/v1/jobs/{gpu}/cancel")
    assert client.get(f"/v1/jobs/{gpu}").json()["queue_workers"] is None  # no longer waiting


def test_listing_pages_with_a_cursor_and_filters_by_status(client: TestClient) -> None:
    ids = [submit(client, name=f"job{i}")["id"] for i in range(3)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]


def test_trained_job_exposes_history_parameters_and_predictions(client: TestClient, trained_job: str) -> None:
    job = client.get(f"/v1/jobs/{trained_job}").json()
    assert (job["status"], job["step"], job["stop_reason"]) == ("succeeded", STATQUEST_UPDATES, "min_step_size")
    history = client.get(f"/v1/jobs/{trained_job}/history").json()
    assert history["steps"] == list(range(STATQUEST_UPDATES + 1))
    assert round(history["ssr"][0], 2) == STATQUEST_SSR0
    named = statquest_named(client.get(f"/v1/jobs/{trained_job}/parameters").json()["layers"])
    assert round(named["b3"], 2) == STATQUEST_B3
    y = client.post(f"/v1/jobs/{trained_job}/predict", json={"x": [[0.0], [0.5], [1.0]]}).json()["y"]
    assert [round(row[0]) for row in y] == [0, 1, 0]


def test_history_thins_on_request(client: TestClient, trained_job: str) -> None:
    every = client.get(f"/v1/jobs/{trained_job}/history", params={"every": 4}).json()
    assert every["steps"] == [0, 4, 8, 9]
    few = client.get(f"/v1/jobs/{trained_job}/history", params={"max_points": 3}).json()
    assert len(few["steps"]) <= 3 and few["steps"][0] == 0 and few["steps"][-1] == 9


def test_parameters_at_a_checkpointed_step_and_404_elsewhere(client: TestClient, trained_job: str) -> None:
    initial = client.get(f"/v1/jobs/{trained_job}/parameters", params={"step": 0}).json()
    assert initial["step"] == 0 and statquest_named(initial["layers"])["b3"] == 0.0
    missing = client.get(f"/v1/jobs/{trained_job}/parameters", params={"step": 5})
    assert missing.status_code == 404 and "detail" in missing.json()


def test_cancel_queued_then_again_is_409(client: TestClient) -> None:
    job = submit(client)
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_cancel_of_a_succeeded_job_is_409(client: TestClient, trained_job: str) -> None:
    answer = client.post(f"/v1/jobs/{trained_job}/cancel")
    assert answer.status_code == 409 and "succeeded" in answer.json()["detail"]


def test_predict_and_parameters_before_any_checkpoint_are_409(client: TestClient) -> None:
    job = submit(client)
    assert client.post(f"/v1/jobs/{job['id']}/predict", json={"x": [[1.0]]}).status_code == 409
    assert client.get(f"/v1/jobs/{job['id']}/parameters").status_code == 409


def test_predict_with_inputs_of_the_wrong_width_names_x(client: TestClient, trained_job: str) -> None:
    answer = client.post(f"/v1/jobs/{trained_job}/predict", json={"x": [[1.0, 2.0]]})
    assert answer.status_code == 422 and "body.x" in locs(answer)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/jobs/{id}", None),
        ("GET", "/v1/jobs/{id}/history", None),
        ("GET", "/v1/jobs/{id}/parameters", None),
        ("POST", "/v1/jobs/{id}/predict", {"x": [[1.0]]}),
        ("POST", "/v1/jobs/{id}/cancel", None),
        ("GET", "/v1/datasets/{id}", None),
    ],
)
def test_unknown_ids_are_404(client: TestClient, method: str, path: str, body: dict | None) -> None:
    answer = client.request(method, path.format(id="no-such-id"), json=body)
    assert answer.status_code == 404
    assert "no-such-id" in answer.json()["detail"]
