"""A sweep of hostile and odd requests: every one gets a JSON answer below 500."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from services.examples import statquest_job

RAW_BODIES = [
    b"", b"null", b"[]", b"{}", b"123", b'"text"', b'{"name": ', b"\xff\xfe\x00", b"NaN",
    b"[" * 5000 + b"]" * 5000, b'{"learning_rate": 1' + b"0" * 5000 + b"}", b"1e999999",
    b'{"x": [[1e309]], "y": [[0]]}', b'{"x": [["a"]], "y": [[0]]}', b'{"x": [[true]], "y": [[0]]}',
    b'{"x": [[]], "y": [[]]}', b'{"x": [1, 2], "y": [3, 4]}',
]
POST_PATHS = ["/v1/jobs", "/v1/datasets", "/v1/jobs/{id}/predict", "/v1/jobs/{id}/cancel"]
CONTENT_TYPES = ["application/json", "text/csv", "text/plain", "multipart/form-data; boundary=zz", "application/xml"]

SPEC_CHANGES = [
    {"architecture": None}, {"architecture": {"layers": [1, 10**9, 1]}}, {"architecture": {"layers": [1] * 10**4}},
    {"architecture": {"layers": [1, -2, 1]}}, {"data": {"dataset_id": 5}}, {"data": {"dataset_id": ""}},
    {"data": {"x": [[0.0]], "y": [[0.0]], "dataset_id": "d"}}, {"data": {"x": [[0.0]] * 3}},
    {"init": {"seed": -1}}, {"init": {"seed": 2**64}}, {"init": {"seed": 1, "parameters": {}}},
    {"init": {"parameters": {"layers": []}}}, {"trainable": "layers.1.bias"}, {"trainable": []},
    {"trainable": [None]}, {"stop": {"target_ssr": -1}}, {"stop": {"min_step_size": "small"}},
    {"stop": {"max_steps": 2**70}}, {"batch_size": 100}, {"batch_size": 0}, {"dtype": "float16"},
    {"name": ""}, {"name": "n" * 1000}, {"learning_rate": True}, {"learning_rate": 1e308},
    {"checkpoint_every": 2**63}, {"device": None}, {"momentum": -0.5},
]
QUERIES = [
    "/v1/jobs?limit=1e3", "/v1/jobs?limit=99999999999999999999999", "/v1/jobs?cursor=%00%ff",
    "/v1/jobs?status=", "/v1/jobs?sweep_id=" + "s" * 100, "/v1/jobs?cursor=" + "A" * 600,
    "/v1/jobs?cursor=MjAyNHx4", "/v1/jobs/{id}/history?every=1000000000000000000000",
    "/v1/jobs/{id}/history?max_points=-5", "/v1/jobs/{id}/parameters?step=99999999999999999999",
    "/v1/jobs/" + "j" * 100, "/v1/jobs/%00", "/v1/datasets/" + "d" * 100, "/v1/nothing",
]


def _assert_json_below_500(answer) -> None:  # noqa: ANN001 (an httpx Response)
    assert answer.status_code < 500, answer.text
    assert "detail" in answer.json() or answer.status_code < 300


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("path", POST_PATHS)
def test_raw_bodies_never_cause_a_server_error(client: TestClient, path: str, content_type: str) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    for body in RAW_BODIES:
        answer = client.post(path.format(id=job_id), content=body, headers={"content-type": content_type})
        _assert_json_below_500(answer)


@pytest.mark.parametrize("change", SPEC_CHANGES, ids=[json.dumps(c)[:40] for c in SPEC_CHANGES])
def test_odd_specs_never_cause_a_server_error(client: TestClient, change: dict) -> None:
    _assert_json_below_500(client.post("/v1/jobs", json=statquest_job() | change))


def test_odd_queries_never_cause_a_server_error(client: TestClient, trained_job: str) -> None:
    for query in QUERIES:
        _assert_json_below_500(client.get(query.format(id=trained_job)))
