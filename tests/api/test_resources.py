"""What the API says about its resources: Location on creation, what a cancel will do, which
checkpoints exist, and a history streamed as CSV or NDJSON that equals the JSON one."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from fastapi.testclient import TestClient

from services.db.models import Job
from services.db.session import session_scope
from services.examples import statquest_job
from tests.api.conftest import train


def test_created_resources_carry_their_location(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=statquest_job())
    data = client.post("/v1/datasets", json={"x": [[0.0]], "y": [[1.0]]})
    base = statquest_job() | {"stop": {"max_steps": 3}}
    sweep = client.post("/v1/sweeps", json={"name": "s", "base": base, "grid": {"learning_rate": [0.1, 0.2]}})
    for answer, prefix in ((job, "/v1/jobs/"), (data, "/v1/datasets/"), (sweep, "/v1/sweeps/")):
        assert answer.status_code == 201, answer.text
        location = answer.headers["location"]
        assert location == prefix + answer.json()["id"]
        assert client.get(location).json()["id"] == answer.json()["id"]


def test_cancelling_a_running_job_says_it_will_stop(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["cancel_requested"] is False
    with session_scope() as session:  # a worker has claimed it
        session.get(Job, job_id).status = "running"
    answer = client.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 200
    assert answer.json()["status"] == "running" and answer.json()["cancel_requested"] is True
    queued = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    now = client.post(f"/v1/jobs/{queued}/cancel").json()
    assert now["status"] == "cancelled" and now["cancel_requested"] is False


def test_parameters_list_the_checkpoint_steps(client: TestClient) -> None:
    trained_job = client.post("/v1/jobs", json=statquest_job() | {"checkpoint_every": 2}).json()["id"]
    train(trained_job)
    latest = client.get(f"/v1/jobs/{trained_job}/parameters").json()
    steps = latest["checkpoint_steps"]
    assert steps[0] == 0 and steps[-1] == latest["step"] and steps == sorted(set(steps)) and len(steps) > 2
    middle = client.get(f"/v1/jobs/{trained_job}/parameters", params={"step": steps[1]}).json()
    assert middle["step"] == steps[1] and middle["checkpoint_steps"] == steps
    missing = client.get(f"/v1/jobs/{trained_job}/parameters", params={"step": steps[1] + 1})
    assert missing.status_code == 404 and str(steps[1]) in missing.text  # says which steps exist


def test_history_streams_as_csv_and_ndjson_equal_to_the_json(client: TestClient, trained_job: str) -> None:
    whole = client.get(f"/v1/jobs/{trained_job}/history").json()
    assert len(whole["steps"]) > 5
    csv = client.get(f"/v1/jobs/{trained_job}/history", params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0] == "step,ssr"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(s) for s, _ in rows] == whole["steps"]
    assert all(math.isclose(float(v), w) for (_, v), w in zip(rows, whole["ssr"]))
    nd = client.get(f"/v1/jobs/{trained_job}/history", params={"format": "ndjson", "every": 5})
    assert nd.headers["content-type"].startswith("application/x-ndjson")
    thinned = client.get(f"/v1/jobs/{trained_job}/history", params={"every": 5}).json()
    objects = [json.loads(line) for line in nd.text.splitlines()]
    assert [o["step"] for o in objects] == thinned["steps"] and [o["ssr"] for o in objects] == thinned["ssr"]


def test_a_streamed_history_is_not_capped_like_the_document(limited: Callable[..., TestClient]) -> None:
    client = limited(max_history_points=5)
    job_id = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    train(job_id)
    refused = client.get(f"/v1/jobs/{job_id}/history", params={"every": 1})
    assert refused.status_code == 422 and "stream" in refused.text
    streamed = client.get(f"/v1/jobs/{job_id}/history", params={"format": "csv"})
    steps = client.get(f"/v1/jobs/{job_id}").json()["step"]
    assert len(streamed.text.splitlines()) == steps + 2  # header + steps 0..step
