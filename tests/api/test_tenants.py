"""Auth and tenants over HTTP: every /v1 endpoint needs a key, and one tenant never sees, changes
or learns of another's jobs, sweeps, datasets or idempotency keys. Limits per tenant: queued
jobs (429 with Retry-After) and the estimated cost of one job or sweep (422 naming the field)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from services.examples import statquest_job
from services.keys import KeyRing
from tests.api.conftest import train

ALICE, BOB, METRICS = "alice-key-0123456789", "bob-key-0123456789ab", "metrics-key-0123456789"
KEYS = f"alice:{ALICE},bob:{BOB}"
SOME_ID = "00000000-0000-4000-8000-000000000000"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def app_client(limited: Callable[..., TestClient]) -> TestClient:
    return limited(api_keys=KEYS, metrics_key=METRICS)


def sweep_body() -> dict:
    base = statquest_job()
    base["stop"] = {"max_steps": 5}
    return {"name": "lr", "base": base, "grid": {"learning_rate": [0.05, 0.1]}}


def v1_operations(client: TestClient) -> list[tuple[str, str]]:
    """(method, path with ids filled in) of every /v1 operation the OpenAPI document lists, so
    an endpoint added later is checked too."""
    found = []
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        if path.startswith("/v1"):
            found += [(method.upper(), re.sub(r"\{[^}]+\}", SOME_ID, path)) for method in sorted(operations)]
    return found


def test_every_v1_operation_needs_a_valid_key(app_client: TestClient) -> None:
    operations = v1_operations(app_client)
    assert len(operations) >= 12
    for method, path in operations:
        for headers in ({}, auth("not-a-key-of-anyone-here"), {"Authorization": f"Basic {ALICE}"}):
            answer = app_client.request(method, path, headers=headers, json={})
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer"), (method, path)


def test_the_openapi_document_puts_the_bearer_scheme_on_every_v1_operation_only(app_client: TestClient) -> None:
    document = app_client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key (DESCENT_API_KEYS); not needed when auth is off"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            expected = [{"HTTPBearer": []}] if path.startswith("/v1/") else None
            assert operation.get("security") == expected, (method, path)


def test_health_is_open_and_metrics_take_the_operators_key_only(app_client: TestClient) -> None:
    assert app_client.get("/healthz").status_code == 200
    assert app_client.get("/readyz").status_code == 200
    assert app_client.get("/metrics").status_code == 401
    assert app_client.get("/metrics", headers=auth(ALICE)).status_code == 403
    answer = app_client.get("/metrics", headers=auth(METRICS))
    assert answer.status_code == 200 and "descent_jobs" in answer.text


def test_another_tenants_resources_are_not_found_anywhere(app_client: TestClient) -> None:
    job = app_client.post("/v1/jobs", json=statquest_job(), headers=auth(ALICE)).json()["id"]
    train(job)
    sweep = app_client.post("/v1/sweeps", json=sweep_body(), headers=auth(ALICE)).json()["id"]
    data = app_client.post("/v1/datasets", json={"x": [[0.0], [1.0]], "y": [[1.0], [0.0]]},
                           headers=auth(ALICE)).json()["id"]
    mine = app_client.get(f"/v1/jobs/{job}/parameters", headers=auth(ALICE))
    assert mine.status_code == 200
    for method, path, body in [
        ("GET", f"/v1/jobs/{job}", None), ("GET", f"/v1/jobs/{job}/history", None),
        ("GET", f"/v1/jobs/{job}/parameters", None), ("POST", f"/v1/jobs/{job}/predict", {"x": [[0.5]]}),
        ("POST", f"/v1/jobs/{job}/cancel", None), ("GET", f"/v1/sweeps/{sweep}", None),
        ("POST", f"/v1/sweeps/{sweep}/cancel", None), ("GET", f"/v1/datasets/{data}", None),
    ]:
        answer = app_client.request(method, path, json=body, headers=auth(BOB))
        assert answer.status_code == 404, (method, path, answer.text)
    for _, path in v1_operations(app_client):
        if path.endswith("plot.png"):  # pictures, where the app has them
            mine = path.replace(SOME_ID, job if path.startswith("/v1/jobs") else sweep)
            assert app_client.get(mine, headers=auth(BOB)).status_code == 404, mine
    # Lists: Bob sees nothing of Alice's; Alice sees her own.
    assert app_client.get("/v1/jobs", headers=auth(BOB)).json()["items"] == []
    assert app_client.get("/v1/jobs", params={"sweep_id": sweep}, headers=auth(BOB)).json()["items"] == []
    assert app_client.get("/v1/sweeps", headers=auth(BOB)).json()["items"] == []
    assert len(app_client.get("/v1/jobs", headers=auth(ALICE)).json()["items"]) == 3  # the job + 2 members
    assert [s["id"] for s in app_client.get("/v1/sweeps", headers=auth(ALICE)).json()["items"]] == [sweep]
    # Nothing of Alice's changed: her sweep was not cancelled by Bob's request.
    assert app_client.get(f"/v1/sweeps/{sweep}", headers=auth(ALICE)).json()["status"] != "cancelled"


def test_a_dataset_is_shared_within_a_tenant_never_across(app_client: TestClient) -> None:
    data = {"x": [[0.0], [0.5], [1.0]], "y": [[0.0], [1.0], [0.0]]}
    first = app_client.post("/v1/datasets", json=data, headers=auth(ALICE)).json()
    again = app_client.post("/v1/datasets", json=data, headers=auth(ALICE)).json()
    other = app_client.post("/v1/datasets", json=data, headers=auth(BOB)).json()
    assert first["id"] == again["id"]
    assert other["id"] != first["id"]  # Bob learns nothing of Alice's upload
    spec = statquest_job()
    spec["data"] = {"dataset_id": first["id"]}
    refused = app_client.post("/v1/jobs", json=spec, headers=auth(BOB))
    assert refused.status_code == 422 and "unknown dataset" in refused.text
    assert app_client.post("/v1/jobs", json=spec, headers=auth(ALICE)).status_code == 201


def test_idempotency_keys_are_per_tenant(app_client: TestClient) -> None:
    key = {"Idempotency-Key": "same-key-for-both"}
    a1 = app_client.post("/v1/jobs", json=statquest_job(), headers=auth(ALICE) | key)
    a2 = app_client.post("/v1/jobs", json=statquest_job(), headers=auth(ALICE) | key)
    b1 = app_client.post("/v1/jobs", json=statquest_job(), headers=auth(BOB) | key)
    assert a1.status_code == b1.status_code == 201
    assert a2.json()["id"] == a1.json()["id"]
    assert b1.json()["id"] != a1.json()["id"]
    assert len(app_client.get("/v1/jobs", headers=auth(BOB)).json()["items"]) == 1


def test_queued_jobs_per_tenant_are_limited_with_retry_after(limited: Callable[..., TestClient]) -> None:
    client = limited(api_keys=KEYS, tenant_max_queued=2)
    for _ in range(2):
        assert client.post("/v1/jobs", json=statquest_job(), headers=auth(ALICE)).status_code == 201
    refused = client.post("/v1/jobs", json=statquest_job(), headers=auth(ALICE))
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert client.post("/v1/sweeps", json=sweep_body(), headers=auth(ALICE)).status_code == 429
    assert client.post("/v1/sweeps", json=sweep_body(), headers=auth(BOB)).status_code == 201  # Bob's own room
    assert len(client.get("/v1/jobs", headers=auth(ALICE)).json()["items"]) == 2  # nothing more stored


def test_training_cost_is_checked_before_anything_is_stored(limited: Callable[..., TestClient]) -> None:
    client = limited(api_keys=KEYS, tenant_max_cost=1e5)  # StatQuest: 7 parameters x 3 points x steps
    spec = statquest_job()
    spec["stop"] = {"max_steps": 10_000}
    refused = client.post("/v1/jobs", json=spec, headers=auth(ALICE))
    assert refused.status_code == 422, refused.text
    assert "max_steps" in refused.text and "cost" in refused.text
    body = sweep_body()
    body["base"]["stop"] = {"max_steps": 4000}  # 2 members x 7 x 3 x 4000 = 1.7e5
    refused = client.post("/v1/sweeps", json=body, headers=auth(ALICE))
    assert refused.status_code == 422 and "2 members" in refused.text
    assert client.get("/v1/jobs", headers=auth(ALICE)).json()["items"] == []
    assert client.get("/v1/sweeps", headers=auth(ALICE)).json()["items"] == []
    spec["stop"] = {"max_steps": 100}
    assert client.post("/v1/jobs", json=spec, headers=auth(ALICE)).status_code == 201


def test_key_ring_formats_and_refusals() -> None:
    ring = KeyRing.parse(f"alice:{ALICE}, bob:{BOB}\n{METRICS}x")
    assert ring.tenant_of(ALICE) == "alice" and ring.tenant_of(BOB) == "bob"
    assert ring.tenant_of(METRICS + "x").startswith("key-")
    assert ring.tenant_of("alice") is None and ring.tenant_of(ALICE + "!") is None
    assert ALICE not in repr(ring)  # digests only
    assert not KeyRing.parse("").enabled and not KeyRing.parse(" , ").enabled
    trailing = KeyRing.parse(f",alice:{ALICE},\n")  # a list edited by hand: empty entries are none
    assert trailing.tenant_of(ALICE) == "alice" and len(trailing.entries) == 1
    for bad, says in [("alice:short", "at least 16"), (f"al ice:{ALICE}", "at least 16"),
                      (f"ali/ce:{ALICE}", "tenant"), (f"a:{ALICE},b:{ALICE}", "twice")]:
        with pytest.raises(ValueError, match=says):
            KeyRing.parse(bad)
    with pytest.raises(ValueError, match="differ"):
        KeyRing.parse(f"a:{ALICE}", ALICE)


def test_descent_up_without_keys_serves_this_machine_only() -> None:
    from services.config import Settings
    from services.stack import StackError, auth_note, check_binding

    off, on = Settings(api_keys=""), Settings(api_keys=KEYS)
    check_binding("127.0.0.1", off)  # loopback: fine without keys
    with pytest.raises(StackError, match="auth is off"):
        check_binding("0.0.0.0", off)
    check_binding("0.0.0.0", on)
    with pytest.raises(StackError, match="entry 1"):
        check_binding("127.0.0.1", Settings(api_keys="alice:short"))
    assert auth_note(off).startswith("auth off") and "2 tenant(s)" in auth_note(on)
