"""``Idempotency-Key`` on the three creates (jobs, sweeps, datasets): a retry with the key and
the same body replays the first answer (200, ``Idempotent-Replayed: true``, the resource as it
is now) and makes nothing; the key with another body is a 409; racing requests with one key
make one resource. Run on SQLite and PostgreSQL: the race is decided by each database."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from services.db.models import Dataset, IdempotencyKey, Job, Sweep, utcnow
from services.config import get_settings
from services.db.session import session_scope
from services.examples import statquest_job
from tests.conftest import database_of_kind

JOBS, SWEEPS, DATASETS = "/v1/jobs", "/v1/sweeps", "/v1/datasets"
TABLE = {JOBS: Job, SWEEPS: Sweep, DATASETS: Dataset}


def request_body(path: str, variant: int = 0) -> dict:
    """A valid body for ``path``; another ``variant`` is another request."""
    if path == JOBS:
        return statquest_job() | {"name": f"job-{variant}"}
    if path == SWEEPS:
        return {"name": f"sweep-{variant}", "base": statquest_job(), "grid": {"learning_rate": [0.05, 0.1]}}
    return {"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [float(variant)]]}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Overrides the API tests' SQLite-only database: the key's race is the database's."""
    return database_of_kind(request)


def post(client: TestClient, path: str, body: dict, key: str | bytes | None = "key-1"):  # noqa: ANN201
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(path, json=body, headers=headers)


def count(path: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(TABLE[path]))


def submitted() -> float:
    return REGISTRY.get_sample_value("descent_jobs_submitted_total") or 0.0


@pytest.mark.parametrize("path", [JOBS, SWEEPS, DATASETS])
def test_a_retry_with_the_same_key_replays_the_first_answer(client: TestClient, path: str) -> None:
    first = post(client, path, request_body(path))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    before = submitted()
    again = post(client, path, request_body(path))
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert count(path) == 1
    assert submitted() == before  # a replay submits nothing


@pytest.mark.parametrize("path", [JOBS, SWEEPS, DATASETS])
def test_the_same_key_with_another_body_is_a_conflict(client: TestClient, path: str) -> None:
    assert post(client, path, request_body(path)).status_code == 201
    answer = post(client, path, request_body(path, variant=1))
    assert answer.status_code == 409, answer.text
    assert "Idempotency-Key" in answer.json()["detail"]
    assert count(path) == 1


def test_the_same_key_on_another_endpoint_is_a_conflict(client: TestClient) -> None:
    assert post(client, JOBS, request_body(JOBS)).status_code == 201
    for path in (SWEEPS, DATASETS):
        answer = post(client, path, request_body(path))
        assert answer.status_code == 409, answer.text
        assert "Idempotency-Key" in answer.json()["detail"]
    assert (count(SWEEPS), count(DATASETS)) == (0, 1)  # the job's own inline data only


@pytest.mark.parametrize("path", [JOBS, SWEEPS])
def test_without_a_key_every_request_creates(client: TestClient, path: str) -> None:
    answers = [post(client, path, request_body(path), key=None) for _ in range(2)]
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].json()["id"] != answers[1].json()["id"]
    assert count(path) == 2
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


def test_datasets_without_a_key_are_still_one_per_content(client: TestClient) -> None:
    answers = [post(client, DATASETS, request_body(DATASETS), key=None) for _ in range(2)]
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert not any("idempotent-replayed" in a.headers for a in answers)


def test_a_dataset_key_replays_even_when_the_data_was_already_stored(client: TestClient) -> None:
    """Content dedup and keys together: the data exists (no key), a keyed upload of it is a
    201 of that dataset, its retry a replay, and the key with other data a 409."""
    plain = post(client, DATASETS, request_body(DATASETS), key=None).json()
    keyed = post(client, DATASETS, request_body(DATASETS))
    assert (keyed.status_code, keyed.json()["id"]) == (201, plain["id"])
    again = post(client, DATASETS, request_body(DATASETS))
    assert (again.status_code, again.headers["idempotent-replayed"], again.json()["id"]) == (200, "true", plain["id"])
    assert post(client, DATASETS, request_body(DATASETS, variant=1)).status_code == 409
    assert count(DATASETS) == 1


def test_a_csv_upload_and_its_json_twin_are_the_same_request(client: TestClient) -> None:
    """The hash covers the parsed data, not the bytes: the same numbers as CSV replay."""
    first = post(client, DATASETS, request_body(DATASETS))
    csv = "x,y\n0,0\n0.5,1\n1.0,0\n"
    again = client.post(DATASETS, content=csv, headers={"content-type": "text/csv", "Idempotency-Key": "key-1"})
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])


@pytest.mark.parametrize("path", [JOBS, SWEEPS, DATASETS])
def test_an_invalid_key_is_a_422_naming_the_header(client: TestClient, path: str) -> None:
    for key in ("", "k" * 256, "caf\xe9", "tab\there", "bell\x07"):
        answer = post(client, path, request_body(path), key=key.encode("latin-1"))
        assert answer.status_code == 422, (key, answer.text)
        [error] = answer.json()["errors"]
        assert error["loc"] == ["header", "idempotency-key"]
        assert "printable ASCII" in error["msg"]
    assert count(path) == 0


def test_the_longest_and_oddest_printable_keys_are_fine(client: TestClient) -> None:
    for key in ("k" * 255, "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./ x"):
        assert post(client, JOBS, request_body(JOBS), key=key).status_code == 201
        assert post(client, JOBS, request_body(JOBS), key=key).status_code == 200
    assert count(JOBS) == 2


def test_a_replayed_job_is_read_as_it_is_now(client: TestClient) -> None:
    job = post(client, JOBS, request_body(JOBS)).json()
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status="running", step=7))
    again = post(client, JOBS, request_body(JOBS))
    assert again.status_code == 200
    assert (again.json()["status"], again.json()["step"]) == ("running", 7)


def test_a_replayed_sweep_is_read_as_it_is_now(client: TestClient) -> None:
    sweep = post(client, SWEEPS, request_body(SWEEPS)).json()
    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel").status_code == 200
    again = post(client, SWEEPS, request_body(SWEEPS))
    assert (again.status_code, again.json()["id"], again.json()["status"]) == (200, sweep["id"], "cancelled")


@pytest.mark.parametrize("path", [JOBS, SWEEPS, DATASETS])
def test_an_expired_key_is_a_new_key(client: TestClient, path: str) -> None:
    """Older than the lifetime, the key counts as absent: the same body makes a new resource
    (or, for datasets, the same one again, as a 201), and the row now points at that."""
    first = post(client, path, request_body(path)).json()
    with session_scope() as session:
        old = utcnow() - timedelta(seconds=get_settings().idempotency_key_ttl + 1)
        session.execute(update(IdempotencyKey).values(created_at=old))
    fresh = post(client, path, request_body(path, variant=1))  # another body: the old one is forgotten
    assert fresh.status_code == 201, fresh.text
    assert (fresh.json()["id"] != first["id"]) and count(path) == 2
    again = post(client, path, request_body(path, variant=1))
    assert (again.status_code, again.json()["id"]) == (200, fresh.json()["id"])
    assert post(client, path, request_body(path)).status_code == 409


def test_the_lifetime_is_read_at_each_request(client: TestClient) -> None:
    first = post(client, JOBS, request_body(JOBS)).json()
    get_settings().idempotency_key_ttl = 1e-9
    again = post(client, JOBS, request_body(JOBS))
    assert again.status_code == 201 and again.json()["id"] != first["id"]


@pytest.mark.parametrize("path", [JOBS, SWEEPS, DATASETS])
def test_racing_requests_with_one_key_make_one_resource(client: TestClient, path: str) -> None:
    """Eight clients at once: one creates (201), the others answer with its resource (200)."""
    app, answers = client.app, [None] * 8
    start = threading.Barrier(len(answers))
    before = submitted()

    def send(i: int) -> None:
        own = TestClient(app, raise_server_exceptions=False)  # no `with`: the app's lifespan is the fixture's
        start.wait()
        answers[i] = post(own, path, request_body(path), key="race")
        own.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(answers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 7 + [201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert count(path) == 1
    assert submitted() - before == {JOBS: 1, SWEEPS: 2, DATASETS: 0}[path]


def test_openapi_documents_the_header_and_the_answers(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (JOBS, SWEEPS, DATASETS):
        operation = paths[path]["post"]
        assert {p["name"] for p in operation["parameters"] if p["in"] == "header"} == {"idempotency-key"}
        assert operation["responses"].keys() >= {"200", "201", "409", "422"}
        assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"]
