"""Input at the edges of what the API takes: each is a 4xx naming the field and the problem,
never a 500, and what the OpenAPI document says about it is what the API does.

Cursors past the calendar's UTC range, data faults of a stored dataset (located at its
``dataset_id``), float32 jobs with numbers beyond float32, a missing key before a malformed body,
the documented bounds of ``Idempotency-Key``, ``limit`` and ``max_points``, CSV cells that only
Python's ``float()`` would take, and an empty ``trainable``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from services.examples import statquest_job
from tests.api.conftest import locs, train

BEYOND_FLOAT32 = "exceeds the float32 range (±3.4e38)"


def first_error(answer) -> dict:  # noqa: ANN001 (an httpx Response)
    return answer.json()["errors"][0]


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def dataset(client: TestClient, x: list[list[float]], y: list[list[float]]) -> str:
    answer = client.post("/v1/datasets", json={"x": x, "y": y})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def job_on(dataset_id: str, **changes: object) -> dict:
    return statquest_job() | {"data": {"dataset_id": dataset_id}} | changes


# --- 1. cursors whose time has no UTC equivalent --------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/sweeps"])
@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_cursor_beyond_the_utc_calendar_is_422(client: TestClient, path: str, stamp: str) -> None:
    answer = client.get(path, params={"cursor": cursor_of(f"{stamp}|a")})
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["query", "cursor"]
    assert first_error(answer)["msg"] == "is not a cursor returned by this listing"


# --- 4. a stored dataset's faults are located at its dataset_id ----------------------------------


def test_a_dataset_with_the_wrong_input_width_is_located_at_its_id(client: TestClient) -> None:
    wide = dataset(client, [[0.0, 1.0]], [[1.0]])
    answer = client.post("/v1/jobs", json=job_on(wide))
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "data", "dataset_id"]
    assert first_error(answer)["msg"] == "the dataset's x rows have 2 values but layers[0] is 1"


def test_a_dataset_with_the_wrong_output_width_is_located_at_its_id(client: TestClient) -> None:
    two_outputs = dataset(client, [[0.0]], [[1.0, 2.0]])
    answer = client.post("/v1/jobs", json=job_on(two_outputs))
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "data", "dataset_id"]
    assert first_error(answer)["msg"] == "the dataset's y rows have 2 values but layers[-1] is 1"


def test_a_dataset_past_the_point_limit_is_located_at_its_id(limited: Callable[..., TestClient]) -> None:
    client = limited(max_points=3)
    stored = dataset(client, [[0.0], [0.5], [1.0]], [[0.0], [1.0], [0.0]])
    smaller = limited(max_points=2)  # the limit went down after the upload
    answer = smaller.post("/v1/jobs", json=job_on(stored))
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "data", "dataset_id"]
    assert first_error(answer)["msg"] == "3 points exceed the limit of 2"


def test_a_sweep_base_dataset_with_the_wrong_shape_is_located_at_its_id(client: TestClient) -> None:
    wide = dataset(client, [[0.0, 1.0]], [[1.0]])
    answer = client.post("/v1/sweeps", json={"base": job_on(wide), "grid": {"learning_rate": [0.1, 0.2]}})
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "base", "data", "dataset_id"]
    assert "the dataset's x rows have 2 values" in first_error(answer)["msg"]


def test_an_inline_data_shape_fault_is_still_located_at_its_rows(client: TestClient) -> None:
    answer = client.post("/v1/jobs", json=statquest_job() | {"data": {"x": [[0.0, 1.0]], "y": [[1.0]]}})
    assert answer.status_code == 422, answer.text
    assert locs(answer) == ["body.data.x"]
    assert first_error(answer)["msg"] == "rows have 2 values but layers[0] is 1"


# --- 6. float32 jobs refuse numbers beyond float32 -----------------------------------------------


def test_a_float32_initial_weight_beyond_float32_is_422_at_the_element(client: TestClient) -> None:
    spec = statquest_job() | {"dtype": "float32"}
    spec["init"]["parameters"]["layers"][1]["weight"] = [[1.0, -1e39]]
    answer = client.post("/v1/jobs", json=spec)
    assert answer.status_code == 422, answer.text
    assert locs(answer) == ["body.init.parameters.layers.1.weight.0.1"]
    assert first_error(answer)["msg"] == BEYOND_FLOAT32


def test_a_float32_initial_bias_beyond_float32_is_422_at_the_element(client: TestClient) -> None:
    spec = statquest_job() | {"dtype": "float32"}
    spec["init"]["parameters"]["layers"][0]["bias"] = [0.0, 4e38]
    answer = client.post("/v1/jobs", json=spec)
    assert answer.status_code == 422, answer.text
    assert locs(answer) == ["body.init.parameters.layers.0.bias.1"]
    assert first_error(answer)["msg"] == BEYOND_FLOAT32


@pytest.mark.parametrize(("data", "expected"), [
    ({"x": [[0.0], [1e308], [1.0]], "y": [[0.0], [1.0], [0.0]]}, "body.data.x.1.0"),
    ({"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [-3.5e38]]}, "body.data.y.2.0"),
])
def test_float32_inline_data_beyond_float32_is_422_at_the_element(client: TestClient, data: dict,
                                                                   expected: str) -> None:
    answer = client.post("/v1/jobs", json=statquest_job() | {"dtype": "float32", "data": data})
    assert answer.status_code == 422, answer.text
    assert locs(answer) == [expected]
    assert first_error(answer)["msg"] == BEYOND_FLOAT32


def test_a_float32_jobs_prediction_input_beyond_float32_is_422_at_the_element(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job() | {"dtype": "float32"}).json()["id"]
    train(job_id)
    answer = client.post(f"/v1/jobs/{job_id}/predict", json={"x": [[0.5], [-1e39]]})
    assert answer.status_code == 422, answer.text
    assert locs(answer) == ["body.x.1.0"] and first_error(answer)["msg"] == BEYOND_FLOAT32


def test_a_job_that_ended_before_training_says_it_has_no_parameters(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    waiting = client.post(f"/v1/jobs/{job_id}/predict", json={"x": [[0.5]]})
    assert waiting.status_code == 409 and "predicts once it has trained" in waiting.json()["detail"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    for answer in (client.post(f"/v1/jobs/{job_id}/predict", json={"x": [[0.5]]}),
                   client.get(f"/v1/jobs/{job_id}/parameters")):
        assert answer.status_code == 409, answer.text
        assert answer.json()["detail"] == f"job {job_id} ended cancelled before its first checkpoint: it has no parameters"


def test_float32_accepts_its_largest_number_and_float64_accepts_more(client: TestClient) -> None:
    largest = {"x": [[0.0], [3.4028234663852886e38], [1.0]], "y": [[0.0], [1.0], [0.0]]}
    assert client.post("/v1/jobs", json=statquest_job() | {"dtype": "float32", "data": largest}).status_code == 201
    huge = {"x": [[0.0], [1e308], [1.0]], "y": [[0.0], [1.0], [0.0]]}
    assert client.post("/v1/jobs", json=statquest_job() | {"data": huge}).status_code == 201


def test_a_float32_job_on_a_dataset_beyond_float32_is_422_at_its_id(client: TestClient) -> None:
    stored = dataset(client, [[0.0], [1e300], [1.0]], [[0.0], [1.0], [0.0]])
    assert client.post("/v1/jobs", json=job_on(stored)).status_code == 201  # float64 holds it
    answer = client.post("/v1/jobs", json=job_on(stored, dtype="float32"))
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "data", "dataset_id"]
    assert BEYOND_FLOAT32 in first_error(answer)["msg"] and "x values" in first_error(answer)["msg"]


def test_a_float32_sweep_member_on_a_dataset_beyond_float32_is_422(client: TestClient) -> None:
    stored = dataset(client, [[0.0], [0.5], [1.0]], [[0.0], [-1e300], [0.0]])
    body = {"base": job_on(stored), "grid": {"dtype": ["float64", "float32"]}}
    answer = client.post("/v1/sweeps", json=body)
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "base", "data", "dataset_id"]
    assert BEYOND_FLOAT32 in first_error(answer)["msg"] and "y values" in first_error(answer)["msg"]


# --- 7. a missing or unknown key wins over a malformed body --------------------------------------

KEY = "alice-key-0123456789"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-key-of-anyone"}])
@pytest.mark.parametrize("content", [b"{", b'{"name": "\xff"}'])
def test_a_malformed_body_without_a_valid_key_is_401(limited: Callable[..., TestClient], headers: dict,
                                                     content: bytes) -> None:
    client = limited(api_keys=f"alice:{KEY}")
    answer = client.post("/v1/jobs", content=content, headers={"content-type": "application/json", **headers})
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["detail"] in ("this endpoint needs an API key: send `Authorization: Bearer <key>`",
                                       "the API key is not valid")


def test_a_malformed_body_with_a_valid_key_is_still_422(limited: Callable[..., TestClient]) -> None:
    client = limited(api_keys=f"alice:{KEY}")
    headers = {"content-type": "application/json", "Authorization": f"Bearer {KEY}"}
    answer = client.post("/v1/jobs", content=b"{", headers=headers)
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body"] and first_error(answer)["type"] == "json_invalid"


def test_without_auth_a_malformed_body_is_422(client: TestClient) -> None:
    answer = client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and first_error(answer)["loc"] == ["body"]


# --- 8. the OpenAPI document states the bounds the API enforces -----------------------------------


def parameter(client: TestClient, path: str, method: str, name: str) -> dict:
    operation = client.get("/openapi.json").json()["paths"][path][method]
    return next(p for p in operation["parameters"] if p["name"] == name)


def test_the_idempotency_key_bounds_are_in_the_schema(client: TestClient) -> None:
    schema = parameter(client, "/v1/jobs", "post", "idempotency-key")["schema"]
    text = next(option for option in schema["anyOf"] if option.get("type") == "string")
    assert (text["minLength"], text["maxLength"], text["pattern"]) == (1, 255, r"^[\x20-\x7e]+$")


@pytest.mark.parametrize("key", ["", "a" * 256, "a\tb"])
def test_a_bad_idempotency_key_is_422_saying_what_a_key_is(client: TestClient, key: str) -> None:
    answer = client.post("/v1/jobs", json=statquest_job(), headers={"Idempotency-Key": key})
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["header", "idempotency-key"]
    assert first_error(answer)["msg"] == "must be 1 to 255 printable ASCII characters"


def test_an_idempotency_key_of_255_printable_characters_is_taken(client: TestClient) -> None:
    key = "".join(chr(32 + i % 95) for i in range(255))
    answer = client.post("/v1/jobs", json=statquest_job(), headers={"Idempotency-Key": key})
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/sweeps"])
def test_the_list_limit_documents_the_configured_maximum(limited: Callable[..., TestClient], path: str) -> None:
    client = limited(max_list_limit=7)
    assert parameter(client, path, "get", "limit")["schema"]["maximum"] == 7
    assert client.get(path, params={"limit": 7}).status_code == 200
    answer = client.get(path, params={"limit": 8})
    assert answer.status_code == 422 and first_error(answer)["loc"] == ["query", "limit"]
    assert first_error(answer)["msg"] == "must be between 1 and 7"


def test_max_points_past_the_json_limit_says_what_the_schema_says(limited: Callable[..., TestClient]) -> None:
    client = limited(max_history_points=5)
    job = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    documented = parameter(client, "/v1/jobs/{job_id}/history", "get", "max_points")
    assert "max_history_points" in documented["description"] and "format=json" in documented["description"]
    answer = client.get(f"/v1/jobs/{job}/history", params={"max_points": 6})
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["query", "max_points"]
    assert first_error(answer)["msg"].startswith("must be at most 5 (max_history_points) with format=json")
    assert "between 1" not in first_error(answer)["msg"]
    assert client.get(f"/v1/jobs/{job}/history", params={"max_points": 5}).status_code == 200
    streamed = client.get(f"/v1/jobs/{job}/history", params={"max_points": 6, "format": "csv"})
    assert streamed.status_code == 200  # the streamed formats take any length


# --- 11. CSV cells are plain decimal numbers, and an upload's errors are at body.file ---------------


@pytest.mark.parametrize(("cell", "problem"), [
    ("1_000", "is not a number"), ("\u0661", "is not a number"), ("0x10", "is not a number"),
    ("1e", "is not a number"), ("--1", "is not a number"),
    ("nan", "is not finite"), ("-Infinity", "is not finite"), ("inf", "is not finite"),
    ("1e400", "is not finite"),
])
def test_a_csv_cell_that_is_not_a_plain_finite_number_is_422(client: TestClient, cell: str, problem: str) -> None:
    answer = client.post("/v1/datasets", content=f"x,y\n0,0\n{cell},1\n".encode(), headers={"content-type": "text/csv"})
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "csv", 3, "x"]
    assert problem in first_error(answer)["msg"] and "line 3, column x" in first_error(answer)["msg"]


def test_plain_csv_numbers_in_every_spelling_are_taken(client: TestClient) -> None:
    text = "x,y\n-1,+2\n.5,5.\n1e3,-2.5E-3\n 7 , 0 \n"
    answer = client.post("/v1/datasets", content=text.encode(), headers={"content-type": "text/csv"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["n_points"] == 4


@pytest.mark.parametrize(("content", "loc"), [
    (b"x,y\n0,0\n1,oops\n", ["body", "file", 3, "y"]),
    (b"x,z\n0,0\n", ["body", "file", 1, "z"]),
    (b"x,y\n", ["body", "file"]),
    (b"x,y\n0,\xe9\n", ["body", "file"]),
])
def test_upload_errors_are_located_at_the_file_field(client: TestClient, content: bytes, loc: list) -> None:
    answer = client.post("/v1/datasets", files={"file": ("d.csv", content, "text/csv")})
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == loc
    assert "pointer" not in first_error(answer)  # a multipart body is no JSON document


# --- 12. trainable names at least one parameter ---------------------------------------------------


def test_an_empty_trainable_is_422(client: TestClient) -> None:
    answer = client.post("/v1/jobs", json=statquest_job() | {"trainable": []})
    assert answer.status_code == 422, answer.text
    assert locs(answer) == ["body.trainable"]
    assert "at least one parameter" in first_error(answer)["msg"]


@pytest.mark.parametrize("trainable", [None, "absent"])
def test_a_null_or_absent_trainable_trains_everything(client: TestClient, trainable: object) -> None:
    spec = statquest_job()
    spec.pop("trainable")
    if trainable is None:
        spec["trainable"] = None
    assert client.post("/v1/jobs", json=spec).status_code == 201


def test_the_schema_says_trainable_needs_one_item(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    options = schemas["JobCreate"]["properties"]["trainable"]["anyOf"]
    assert next(o for o in options if o.get("type") == "array")["minItems"] == 1


def test_an_empty_trainable_in_a_sweep_grid_is_located_there(client: TestClient) -> None:
    answer = client.post("/v1/sweeps", json={"base": statquest_job(), "grid": {"trainable": [["layers.1.bias"], []]}})
    assert answer.status_code == 422, answer.text
    assert first_error(answer)["loc"] == ["body", "grid", "trainable", 1]
    assert "at least one parameter" in first_error(answer)["msg"]


# --- a JSON body declared as something else is a 415 naming the Content-Type ---------------------


@pytest.mark.parametrize("declared", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_not_declared_as_json_is_415_and_stores_nothing(client: TestClient, declared: str | None) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    train(job_id)
    headers = {} if declared is None else {"content-type": declared}
    bodies = {"/v1/jobs": statquest_job(), f"/v1/jobs/{job_id}/predict": {"x": [[0.5]]},
              "/v1/sweeps": {"name": "s", "base": statquest_job(), "grid": {"learning_rate": [0.1, 0.2]}},
              "/v1/datasets": {"x": [[0.0]], "y": [[1.0]]}}
    listed = client.get("/v1/jobs").json()["items"]
    for path, body in bodies.items():
        answer = client.post(path, content=json.dumps(body).encode(), headers=headers)
        assert answer.status_code == 415, (path, answer.text)
        detail = answer.json()["detail"]
        assert detail.startswith("body: send it with Content-Type application/json"), detail
        assert (declared or "no Content-Type") in detail, detail
        assert ("text/csv" in detail) == (path == "/v1/datasets"), detail
    assert client.get("/v1/jobs").json()["items"] == listed
    for path, body in bodies.items():  # declared as JSON, the same bodies are taken
        assert client.post(path, json=body).status_code in (200, 201), path


def test_every_operation_with_a_body_documents_its_415(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    with_body = [(path, method) for path, operations in paths.items() for method, operation in operations.items()
                 if "requestBody" in operation]
    assert len(with_body) >= 4
    for path, method in with_body:
        assert "415" in paths[path][method]["responses"], (path, method)


@pytest.mark.parametrize(("path", "unknown", "takes"), [
    ("/v1/sweeps?status=succeeded", "status", "cursor, limit"),  # sweeps have no status filter
    ("/v1/jobs?limit=5&statu=queued", "statu", "cursor, limit, status, sweep_id"),
    ("/v1/jobs/0c0c8f34-5a18-4f42-a0a8-f2c461bdd671/history?evry=2", "evry", "every, format, max_points"),
    ("/v1/datasets/0c0c8f34-5a18-4f42-a0a8-f2c461bdd671?x=1", "x", "no query parameters"),
])
def test_an_unknown_query_parameter_is_named_not_ignored(client: TestClient, path: str, unknown: str,
                                                         takes: str) -> None:
    """A misspelt or unsupported filter answered as if it had filtered (every sweep for
    ``?status=succeeded``); it is a 422 at the parameter, listing those the endpoint takes."""
    answer = client.get(path)
    assert answer.status_code == 422, answer.text
    error = first_error(answer)
    assert error["loc"] == ["query", unknown] and error["msg"].endswith(f"this endpoint takes {takes}"), error
    assert client.get("/v1/jobs?limit=5&status=queued").status_code == 200  # declared ones pass
