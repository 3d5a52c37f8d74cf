"""Datasets: JSON, CSV body and multipart upload all store the same content once."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.examples import STATQUEST_B3, statquest_job, statquest_named
from tests.api.conftest import locs, train

STATQUEST_DATA = {"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [0.0]]}
STATQUEST_CSV = "x,y\n0,0\n0.5,1\n1,0\n"


def test_json_csv_and_upload_store_one_dataset(client: TestClient) -> None:
    as_json = client.post("/v1/datasets", json=STATQUEST_DATA)
    as_csv = client.post("/v1/datasets", content=STATQUEST_CSV, headers={"content-type": "text/csv"})
    as_file = client.post("/v1/datasets", files={"file": ("statquest.csv", STATQUEST_CSV.encode(), "text/csv")})
    assert {as_json.status_code, as_csv.status_code, as_file.status_code} == {201}
    assert as_json.json()["id"] == as_csv.json()["id"] == as_file.json()["id"]
    read = client.get(f"/v1/datasets/{as_json.json()['id']}").json()
    assert (read["n_points"], read["n_in"], read["n_out"]) == (3, 1, 1)


def test_a_job_trains_on_a_dataset_given_by_id(client: TestClient) -> None:
    dataset = client.post("/v1/datasets", content=STATQUEST_CSV, headers={"content-type": "text/csv"}).json()
    answer = client.post("/v1/jobs", json=statquest_job() | {"data": {"dataset_id": dataset["id"]}})
    assert answer.status_code == 201, answer.text
    train(answer.json()["id"])
    named = statquest_named(client.get(f"/v1/jobs/{answer.json()['id']}/parameters").json()["layers"])
    assert round(named["b3"], 2) == STATQUEST_B3


def test_unknown_dataset_id_names_the_field(client: TestClient) -> None:
    answer = client.post("/v1/jobs", json=statquest_job() | {"data": {"dataset_id": "nope"}})
    assert answer.status_code == 422 and "body.data.dataset_id" in locs(answer)


def test_dataset_that_disagrees_with_the_layers_names_the_field(client: TestClient) -> None:
    dataset = client.post("/v1/datasets", json={"x": [[0.0, 1.0]], "y": [[1.0]]}).json()
    answer = client.post("/v1/jobs", json=statquest_job() | {"data": {"dataset_id": dataset["id"]}})
    # The request has no data.x: the fault is the dataset its dataset_id names.
    assert answer.status_code == 422 and locs(answer) == ["body.data.dataset_id"]


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        ("x,y\n0,0\n1,oops\n", "body.csv.3.y"),
        ("x,z\n0,0\n", "body.csv.1.z"),
        ("x,y\n0,0\n1\n", "body.csv.3"),
        ("x,y\n0,nan\n", "body.csv.2.y"),
        ("x,y\n", "body.csv"),
        ("", "body.csv"),
    ],
)
def test_bad_csv_is_422_naming_line_and_column(client: TestClient, csv: str, expected: str) -> None:
    answer = client.post("/v1/datasets", content=csv, headers={"content-type": "text/csv"})
    assert answer.status_code == 422, answer.text
    assert expected in locs(answer)


def test_bad_uploads_are_422(client: TestClient) -> None:
    latin1 = client.post("/v1/datasets", content="x,y\n0,\xe9\n".encode("latin-1"), headers={"content-type": "text/csv"})
    assert latin1.status_code == 422 and "body.csv" in locs(latin1)
    no_file = client.post("/v1/datasets", files={"data": ("d.csv", b"x,y\n0,0\n")})
    assert no_file.status_code == 422 and "body.file" in locs(no_file)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"x": [[0.0]], "y": [[0.0], [1.0]]}, "body"),
        ({"x": [[0.0], [1.0, 2.0]], "y": [[0.0], [1.0]]}, "body.x.1"),
        ({"x": [], "y": []}, "body.x"),
        ({"x": [[0.0]]}, "body.y"),
    ],
)
def test_bad_json_datasets_are_422(client: TestClient, body: dict, expected: str) -> None:
    answer = client.post("/v1/datasets", json=body)
    assert answer.status_code == 422, answer.text
    assert any(loc.startswith(expected) for loc in locs(answer))


def test_a_file_field_sent_as_plain_text_is_named_as_such(client: TestClient) -> None:
    """``curl -F 'file=<data.csv'`` sends the field without a filename: the client did send a
    field named 'file', so "needs a file field named 'file'" would read as nonsense."""
    answer = client.post("/v1/datasets", content=b'--zz\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
                         b"x,y\n0,0\n\r\n--zz--\r\n", headers={"content-type": "multipart/form-data; boundary=zz"})
    assert answer.status_code == 422, answer.text
    error = answer.json()["errors"][0]
    assert error["loc"] == ["body", "file"] and "plain form field" in error["msg"], error
