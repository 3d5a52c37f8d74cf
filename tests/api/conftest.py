"""HTTP tests: the real app over an in-process transport, on a migrated SQLite database.

Jobs are trained by calling the worker's use case (``services.training.run_pack``) in this
process, which is what the Celery task does; the real worker processes are in ``tests/e2e``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from services.config import Settings, get_settings
from services.db.session import reset_engine
from services.examples import statquest_job


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """HTTP mapping does not depend on the database kind; e2e covers PostgreSQL."""
    return sqlite_url


@pytest.fixture
def client(configured: Settings) -> Iterator[TestClient]:
    configured.broker_folder.mkdir(parents=True)  # as `descent up` does before serving
    # raise_server_exceptions=False: a bug shows up as the 500 a client would get.
    with TestClient(create_app(configured), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def limited(configured: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    """``limited(max_layers=3, ...)``: a client whose settings carry those limits."""
    opened: list[TestClient] = []

    def make(**limits: int | str) -> TestClient:
        for name, value in limits.items():
            monkeypatch.setenv(f"DESCENT_{name.upper()}", str(value))
        get_settings.cache_clear()
        reset_engine()
        get_settings().broker_folder.mkdir(parents=True, exist_ok=True)
        opened.append(TestClient(create_app(), raise_server_exceptions=False))
        return opened[-1]

    yield make
    for test_client in opened:
        test_client.close()


def train(job_id: str) -> None:
    """Run a job to its end, as the Celery task would."""
    from services.training import run_pack

    run_pack([job_id], hostname="pytest", pid=os.getpid())


@pytest.fixture
def trained_job(client: TestClient) -> str:
    """The StatQuest job, submitted over HTTP and trained to the end (b3 = 2.61)."""
    answer = client.post("/v1/jobs", json=statquest_job())
    assert answer.status_code == 201, answer.text
    train(answer.json()["id"])
    return answer.json()["id"]


def locs(answer) -> list[str]:  # noqa: ANN001 (an httpx Response)
    """Each error location of a 422 as dotted text, e.g. 'body.data.x.3.0'."""
    return [".".join(map(str, err["loc"])) for err in answer.json()["errors"]]
