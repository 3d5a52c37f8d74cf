"""One error format everywhere (RFC 9457 problem details), every status documented, examples
that work, and documentation pages that need no network."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from services.config import Settings
from services.errors import NotFound, StorageError, TooMany, Unauthorized
from services.examples import statquest_job
from tests.api.conftest import train

KEY = "alice-key-0123456789abcdef"


def assert_problem(answer, status: int) -> dict:  # noqa: ANN001 (an httpx Response)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == "about:blank" and problem["status"] == status
    assert isinstance(problem["title"], str) and isinstance(problem["detail"], str) and problem["detail"]
    return problem


@pytest.fixture
def raising(configured: Settings) -> TestClient:
    """An app with one extra route that raises what ``?error=`` names."""
    configured.broker_folder.mkdir(parents=True, exist_ok=True)
    app: FastAPI = create_app(configured)
    errors = {
        "too_many": TooMany("queue full: 100 jobs waiting", retry_after=7),
        "unauthorized": Unauthorized("the API key is not valid"),
        "storage": StorageError("connection refused"),
        "bug": RuntimeError("secret internals"),
        "odd": NotFound("job", "\ud800" + "x" * 10_000),
    }

    @app.get("/raise")
    def raise_it(error: str) -> None:
        raise errors[error]

    return TestClient(app, raise_server_exceptions=False)


def test_each_status_is_a_problem_with_its_headers(client: TestClient, raising: TestClient) -> None:
    assert_problem(client.get("/v1/jobs/no-such-job"), 404)["instance"] == "/v1/jobs/no-such-job"
    assert_problem(client.get("/v1/nothing-here"), 404)
    wrong_method = client.put("/v1/jobs")
    assert_problem(wrong_method, 405)
    assert set(re.split(r",\s*", wrong_method.headers["allow"])) == {"GET", "POST"}
    job = client.post("/v1/jobs", json=statquest_job()).json()["id"]
    client.post(f"/v1/jobs/{job}/cancel")
    assert "cancelled" in assert_problem(client.post(f"/v1/jobs/{job}/cancel"), 409)["detail"]
    assert assert_problem(client.post("/v1/jobs", json={}), 422)["errors"]
    many = raising.get("/raise", params={"error": "too_many"})
    assert assert_problem(many, 429)["detail"] == "queue full: 100 jobs waiting" and many.headers["retry-after"] == "7"
    unauthorized = raising.get("/raise", params={"error": "unauthorized"})
    assert_problem(unauthorized, 401)
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    outage = raising.get("/raise", params={"error": "storage"})
    assert "connection" not in assert_problem(outage, 503)["detail"] and int(outage.headers["retry-after"]) > 0
    bug = raising.get("/raise", params={"error": "bug"})
    assert assert_problem(bug, 500)["detail"] == "internal server error"
    odd = assert_problem(raising.get("/raise", params={"error": "odd"}), 404)
    assert len(odd["detail"]) <= 500 and "\ufffd" in odd["detail"]  # shortened, valid text


def test_a_body_over_the_limit_is_a_413_problem(limited: Callable[..., TestClient]) -> None:
    small = limited(max_body_bytes=2048)
    declared = small.post("/v1/jobs", content=b"[" + b"1," * 2000 + b"1]", headers={"content-type": "application/json"})
    assert "2048" in assert_problem(declared, 413)["detail"]


def test_auth_answers_401_with_a_challenge(limited: Callable[..., TestClient]) -> None:
    client = limited(api_keys=f"alice:{KEY}")
    answer = client.get("/v1/jobs")
    assert_problem(answer, 401)
    assert answer.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_every_error_answer_is_documented_as_a_problem(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"Problem", "FieldError"} <= schema["components"]["schemas"].keys()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            if path.startswith("/v1/"):
                assert {"401", "422", "429", "503"} <= answers.keys(), (method, path)
                assert "Retry-After" in answers["503"]["headers"] and "WWW-Authenticate" in answers["401"]["headers"]
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= answers.keys(), (method, path)
            for status, answer in answers.items():
                if status[0] in "45":
                    assert answer["content"] == {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, status)


def test_creates_document_location_and_link_to_what_they_made(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/sweeps", "/v1/datasets"):
        created = schema["paths"][path]["post"]["responses"]["201"]
        assert "Location" in created["headers"]
        assert created["links"] and all(link["parameters"] for link in created["links"].values())
    job_links = schema["paths"]["/v1/jobs"]["post"]["responses"]["201"]["links"]
    assert any(link["parameters"] == {"job_id": "$response.body#/id"} for link in job_links.values())


def test_the_documented_examples_are_accepted(client: TestClient) -> None:
    """What schemathesis' example phase sends: each request body's example works as given."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    job = client.post("/v1/jobs", json=schemas["JobCreate"]["examples"][0])
    assert job.status_code == 201, job.text
    assert job.headers["location"] == f"/v1/jobs/{job.json()['id']}"
    assert client.get(job.headers["location"]).status_code == 200
    sweep = client.post("/v1/sweeps", json=schemas["SweepCreate"]["examples"][0])
    assert sweep.status_code == 201, sweep.text
    upload = client.get("/openapi.json").json()["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    dataset = client.post("/v1/datasets", json=upload["application/json"]["schema"]["examples"][0])
    assert dataset.status_code == 201, dataset.text
    train(job.json()["id"])
    predicted = client.post(f"/v1/jobs/{job.json()['id']}/predict", json=schemas["PredictRequest"]["examples"][0])
    assert predicted.status_code == 200 and len(predicted.json()["y"]) == 3


def test_limits_in_the_document_are_this_deployments(limited: Callable[..., TestClient]) -> None:
    client = limited(max_checkpoint_every=50, max_layers=4, max_points=30)
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["JobCreate"]["properties"]["checkpoint_every"]["maximum"] == 50
    assert schemas["ArchitectureSpec"]["properties"]["layers"]["maxItems"] == 4
    assert schemas["InlineData"]["properties"]["x"]["maxItems"] == 30
    assert schemas["SeedInit"]["properties"]["seed"]["maximum"] == 2**63 - 1  # an integer, exactly


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_nothing_from_other_hosts(client: TestClient, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert sources and all(source.startswith("/") for source in sources), sources
    assert "cdn" not in html.text and "fonts.googleapis" not in html.text
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source
    if page == "/docs":
        assert '"validatorUrl": null' in html.text  # no badge from validator.swagger.io
