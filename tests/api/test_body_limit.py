"""Bodies over ``max_body_bytes`` are refused with 413 before anything parses them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from services.examples import statquest_job

LIMIT = 2048


@pytest.fixture
def small(limited: Callable[..., TestClient]) -> TestClient:
    return limited(max_body_bytes=LIMIT)


def _assert_413(answer) -> None:  # noqa: ANN001 (an httpx Response)
    """The same problem details whether the middleware or the app's handler answers."""
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert (problem["status"], problem["title"], problem["type"]) == (413, "Content Too Large", "about:blank")
    assert str(LIMIT) in problem["detail"] and problem["instance"].startswith("/v1/")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/datasets", "/v1/jobs/any-id/predict"])
def test_declared_length_over_the_limit_is_413(small: TestClient, path: str) -> None:
    body = b'{"x": [' + b"[1.0]," * LIMIT + b"[1.0]]}"
    _assert_413(small.post(path, content=body, headers={"content-type": "application/json"}))


def test_chunked_body_over_the_limit_is_413(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"a" * 512

    _assert_413(small.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"}))


def test_csv_and_multipart_uploads_are_capped_too(small: TestClient) -> None:
    csv = "x,y\n" + "0.5,1.0\n" * LIMIT
    _assert_413(small.post("/v1/datasets", content=csv, headers={"content-type": "text/csv"}))
    _assert_413(small.post("/v1/datasets", files={"file": ("big.csv", csv.encode(), "text/csv")}))


def test_a_body_under_the_limit_goes_through(small: TestClient) -> None:
    spec = statquest_job()
    answer = small.post("/v1/jobs", json=spec)
    assert answer.status_code == 201, answer.text


def test_chunked_body_under_the_limit_goes_through(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"x": [[0.0], [1.0]],'
        yield b' "y": [[1.0], [2.0]]}'

    answer = small.post("/v1/datasets", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 201, answer.text
