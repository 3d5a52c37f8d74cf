"""Hostile and odd requests: every one is answered below 500 with a problem-details body, and a
refused one stores nothing. On SQLite and on PostgreSQL, whose text and JSONB columns refuse
what SQLite keeps (lone surrogates, NUL), so that is where a leak would surface as a 5xx."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.db.models import Dataset, Job, Sweep
from services.db.session import session_scope
from services.examples import statquest_job
from tests.conftest import database_of_kind

RAW_BODIES = [
    b"", b"null", b"[]", b"{}", b"123", b'"text"', b'{"name": ', b"\xff\xfe\x00", b"NaN",
    b"[" * 5000 + b"]" * 5000, b'{"learning_rate": 1' + b"0" * 5000 + b"}", b"1e999999",
    b'{"x": [[1e309]], "y": [[0]]}', b'{"x": [["a"]], "y": [[0]]}', b'{"x": [[true]], "y": [[0]]}',
    b'{"x": [[]], "y": [[]]}', b'{"x": [1, 2], "y": [3, 4]}',
    # Valid JSON that is not valid text: lone surrogates (escaped, and as CESU-8 bytes), NUL.
    b'{"name": "\\ud800"}', b'{"\\udc00": 1}', b'{"x": [["\\ud800"]], "y": [[0]]}', b'"\\udfff"',
    b'{"name": "\xed\xa0\x80"}', b'{"name": "a\\u0000b"}', b'{"x": [[0]], "y": [[0]], "\\u0000": 1}',
    b'\xef\xbb\xbf{"x": [[0]], "y": [[0]]}', b'{"x": [[0]], "y": [[0]], "' + b"k" * 100_000 + b'": 1}',
]
POST_PATHS = ["/v1/jobs", "/v1/datasets", "/v1/sweeps", "/v1/jobs/{id}/predict", "/v1/jobs/{id}/cancel"]
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
    # The issue's findings.
    {"learning_rate": "0.1"}, {"data": {"x": [[True], [False], [True]], "y": [[0.0]] * 3}},
    {"checkpoint_every": 10**11},
    {"name": "\ud800"}, {"name": "a\x00b"}, {"trainable": ["\udfff"]}, {"data": {"dataset_id": "\ud800"}},
    {"data": {"dataset_id": "a\x00"}}, {"stop": {"max_steps": 2**31}}, {"init": {"seed": 1.0}},
    {"\ud800": 1}, {"architecture": {"layers": [1, 2, 1], "\udc00": "x"}},
]
SWEEP_BODIES = [
    {"base": statquest_job() | {"name": "\ud800"}, "grid": {"learning_rate": [0.1]}},
    {"base": statquest_job() | {"\udc00": 1}, "grid": {"learning_rate": [0.1]}},
    {"base": statquest_job() | {"note": "a\x00b"}, "grid": {"note": [1]}},
    {"base": statquest_job(), "grid": {"name": ["\ud800"]}},
    {"base": statquest_job(), "grid": {"\ud800": [1]}},
    {"base": statquest_job(), "random": {"n": 2, "space": {"\udc00": {"uniform": [0, 1]}}}},
    {"base": statquest_job(), "random": {"n": 2, "space": {"name": {"choice": ["\ud800"]}}}},
    {"base": statquest_job(), "random": {"n": 10**12, "space": {"momentum": {"uniform": [0, 1]}}}},
    {"base": statquest_job(), "random": {"n": "2", "space": {"momentum": {"uniform": [0, 1]}}}},
    {"base": statquest_job(), "random": {"n": 2, "seed": 2**64, "space": {"momentum": {"uniform": [0, 1]}}}},
    {"base": statquest_job(), "grid": {"learning_rate": [0.1] * 100_000}},
    {"base": statquest_job() | {"deep": json.loads("[" * 200 + "]" * 200)}, "grid": {"deep": [1]}},
    {"base": statquest_job(), "early_stopping": {"type": "successive_halving", "min_steps": 2**40}},
    {"base": statquest_job(), "grid": {"checkpoint_every": [10**11]}},
]
RAW_SWEEPS = [  # numbers json.dumps would not write
    '{"base": {"learning_rate": NaN}, "grid": {"learning_rate": [0.1]}}',
    '{"base": {}, "grid": {"learning_rate": [Infinity]}}',
    '{"base": {}, "random": {"n": 2, "space": {"x": {"uniform": [0, 1e999]}}}}',
]
QUERIES = [
    "/v1/jobs?limit=1e3", "/v1/jobs?limit=99999999999999999999999", "/v1/jobs?cursor=%00%ff",
    "/v1/jobs?status=", "/v1/jobs?sweep_id=" + "s" * 100, "/v1/jobs?cursor=" + "A" * 600,
    "/v1/jobs?cursor=MjAyNHx4", "/v1/jobs/{id}/history?every=1000000000000000000000",
    "/v1/jobs/{id}/history?max_points=-5", "/v1/jobs/{id}/parameters?step=99999999999999999999",
    "/v1/jobs/{id}/parameters?step=2147483647", "/v1/jobs/{id}/history?every=2147483648",
    "/v1/jobs/" + "j" * 100, "/v1/jobs/%00", "/v1/jobs/%ED%A0%80", "/v1/datasets/" + "d" * 100,
    "/v1/datasets/%00", "/v1/sweeps/%ED%A0%80", "/v1/sweeps?cursor=%ED%A0%80", "/v1/nothing",
    "/v1/jobs?sweep_id=%00", "/v1/jobs?sweep_id=%ED%A0%80",
    # Cursors that decode to (a time, an id with NUL): what a client could forge.
    "/v1/jobs?cursor=" + base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|\x00").decode().rstrip("="),
    "/v1/sweeps?cursor=" + base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|a\x00").decode().rstrip("="),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return database_of_kind(request)


def _stored() -> tuple[int, int, int]:
    with session_scope() as session:
        return tuple(session.scalar(select(func.count()).select_from(table)) for table in (Job, Dataset, Sweep))


def _assert_answered(answer, before: tuple[int, int, int] | None = None) -> None:  # noqa: ANN001 (httpx Response)
    """Below 500; an error is problem details (with its field errors' locations as lists); a
    refused request stored nothing."""
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        assert answer.headers["content-type"] == "application/problem+json", answer.text
        problem = answer.json()
        assert problem["status"] == answer.status_code and isinstance(problem["detail"], str)
        for error in problem.get("errors", []):
            assert error["loc"][0] in ("body", "query", "path", "header") and error["msg"], error
        if before is not None:
            assert _stored() == before, answer.text


def _post(client: TestClient, path: str, body: object) -> object:
    """JSON as any encoder may write it: lone surrogates escaped (httpx's json= cannot)."""
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def test_raw_bodies_never_cause_a_server_error(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    before = _stored()
    for path in POST_PATHS:
        for content_type in CONTENT_TYPES:
            for body in RAW_BODIES:
                answer = client.post(path.format(id=job_id), content=body, headers={"content-type": content_type})
                if path != "/v1/jobs/{id}/cancel":  # a cancel reads no body: it cancels
                    _assert_answered(answer, before if answer.status_code >= 400 else None)
                else:
                    _assert_answered(answer)
                before = _stored()


def test_odd_specs_never_cause_a_server_error(client: TestClient) -> None:
    for change in SPEC_CHANGES:
        before = _stored()
        _assert_answered(_post(client, "/v1/jobs", statquest_job() | change), before)


def test_odd_sweeps_are_refused_and_store_nothing(client: TestClient) -> None:
    before = _stored()
    for body in SWEEP_BODIES:
        answer = _post(client, "/v1/sweeps", body)
        assert answer.status_code == 422, answer.text
        _assert_answered(answer, before)
    for text in RAW_SWEEPS:
        answer = client.post("/v1/sweeps", content=text, headers={"content-type": "application/json"})
        assert answer.status_code == 422, answer.text
        _assert_answered(answer, before)


def test_odd_queries_never_cause_a_server_error(client: TestClient, trained_job: str) -> None:
    for query in QUERIES:
        _assert_answered(client.get(query.format(id=trained_job)))


def test_odd_predictions_never_cause_a_server_error(client: TestClient, trained_job: str) -> None:
    for x in ([[1e308]], [[-1e308]], [[1e300], [0.5]], [["0.5"]], [[True]], [[0.5, 1.0]], [[]], []):
        _assert_answered(_post(client, f"/v1/jobs/{trained_job}/predict", {"x": x}))


def test_an_output_that_overflows_is_a_422_naming_the_row(client: TestClient, trained_job: str) -> None:
    """The StatQuest network is linear for large inputs: 1e308 overflows to infinity."""
    answer = _post(client, f"/v1/jobs/{trained_job}/predict", {"x": [[0.5], [1e308]]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["loc"][:3] == ["body", "x", 1]


CSV_READ = {
    "CR line endings": ("x,y\r0,0\r0.5,1\r1,0\r", 3),
    "CRLF line endings": ("x,y\r\n0,0\r\n0.5,1\r\n1,0\r\n", 3),
    "mixed line endings": ("x,y\n0,0\r\n0.5,1\r1,0", 3),
    "blank lines and a BOM": ("\ufeffx,y\n\n0,0\r\n\r\n1,0\n\n", 2),
    "quoted cells": ('"x","y"\n"0","0"\n"1.5",2\n', 2),
}
CSV_REFUSED = {
    "NUL in a cell": ("x,y\n0,0\n1\x00,0\n", ["body", "csv", 3]),
    "a cell over the field limit": ("x,y\n0,0\n" + "1" * 200_000 + ",0\n", ["body", "csv", 3]),
    "an unclosed quote": ('x,y\n0,0\n"1,0\n', ["body", "csv"]),
    "a long number": ("x,y\n" + "9" * 5000 + ",0\n", ["body", "csv", 2, "x"]),
    "a long column name": ("x" + "1" * 5000 + ",y\n0,0\n", ["body", "csv", 1]),
    "a huge column number": ("x" + "9" * 7 + ",y\n0,0\n", ["body", "csv", 1]),
    "a non-numeric cell": ("x,y\n0,0\n" + "a" * 10_000 + ",0\n", ["body", "csv", 3, "x"]),
    "a line without a line ending but a CR": ("x,y\r0,0\r0", ["body", "csv", 3]),
}


@pytest.mark.parametrize("case", CSV_READ, ids=list(CSV_READ))
def test_csv_line_endings_of_any_kind_are_read(client: TestClient, case: str) -> None:
    text, points = CSV_READ[case]
    answer = client.post("/v1/datasets", content=text.encode(), headers={"content-type": "text/csv"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["n_points"] == points


def test_bad_csv_uploads_are_422_naming_the_line(client: TestClient) -> None:
    for case, (text, loc) in CSV_REFUSED.items():
        for send in ("body", "file"):
            before = _stored()
            if send == "body":
                answer = client.post("/v1/datasets", content=text.encode(), headers={"content-type": "text/csv"})
            else:
                answer = client.post("/v1/datasets", files={"file": ("d.csv", text.encode(), "text/csv")})
            assert answer.status_code == 422, (case, answer.text)
            _assert_answered(answer, before)
            error = answer.json()["errors"][0]
            expected = loc if send == "body" else ["body", "file", *loc[2:]]  # an upload's CSV is its file field
            assert error["loc"][:len(expected)] == expected and "pointer" not in error, (case, error)
            assert len(answer.text) < 2000, case  # a huge cell is not sent back
