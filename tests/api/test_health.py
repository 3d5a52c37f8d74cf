"""Probes, docs, and what clients see when a dependency is down."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from services.config import Settings


def test_healthz_and_readyz_answer_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}/history", "/v1/datasets", "/readyz"} <= set(paths)
    assert "text/csv" in paths["/v1/datasets"]["post"]["requestBody"]["content"]


def test_readyz_names_an_unreachable_broker(limited: Callable[..., TestClient]) -> None:
    answer = limited(broker_url="redis://127.0.0.1:1/0").get("/readyz")
    assert answer.status_code == 503
    assert set(answer.json()["failing"]) == {"broker"}


def test_readyz_names_a_missing_broker_folder(client: TestClient, configured: Settings) -> None:
    configured.broker_folder.rmdir()
    answer = client.get("/readyz")
    assert answer.status_code == 503 and "broker" in answer.json()["failing"]


def test_a_database_that_is_down_is_503_not_500(limited: Callable[..., TestClient]) -> None:
    down = limited(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    ready = down.get("/readyz")
    assert ready.status_code == 503 and set(ready.json()["failing"]) == {"database"}
    answer = down.get("/v1/jobs/some-id")
    assert answer.status_code == 503 and "detail" in answer.json()


def test_healthz_answers_while_every_pool_thread_is_busy(client: TestClient) -> None:
    """Liveness runs on the event loop: slow requests holding every thread of the pool (where
    FastAPI runs plain ``def`` handlers) must not make an orchestrator kill a live API."""
    import threading

    import anyio.to_thread

    def occupy() -> list[object]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        holders = [object() for _ in range(int(limiter.total_tokens))]
        for holder in holders:
            limiter.acquire_on_behalf_of_nowait(holder)
        return holders

    def release(holders: list[object]) -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        for holder in holders:
            limiter.release_on_behalf_of(holder)

    answers: list[dict] = []
    holders = client.portal.call(_in_loop, occupy)
    try:
        probe = threading.Thread(target=lambda: answers.append(client.get("/healthz").json()), daemon=True)
        probe.start()
        probe.join(5)
        assert answers == [{"status": "ok"}]  # answered while no pool thread was free
    finally:
        client.portal.call(_in_loop, lambda: release(holders))
        probe.join(5)


async def _in_loop(function):  # noqa: ANN001, ANN202 (runs ``function`` on the app's event loop)
    return function()


def test_readyz_names_a_schema_behind_the_code(client: TestClient, configured: Settings) -> None:
    """An API on a database one migration behind answered every request 503 "retry later" while
    /readyz said ready. One a newer Descent migrated stays ready: in a rolling upgrade the
    migration runs while the older APIs still serve."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from services.db.migrate import alembic_config

    url = configured.database_url
    command.downgrade(alembic_config(url), "-1")
    engine = create_engine(url)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    try:
        behind = client.get("/readyz")
        assert behind.status_code == 503 and set(behind.json()["failing"]) == {"database"}
        assert "descent db upgrade" in behind.json()["failing"]["database"]
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
        assert client.get("/readyz").status_code == 200
    finally:  # and back: the upgrade picks up from where the code left it
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :before"), {"before": before})
        engine.dispose()
        command.upgrade(alembic_config(url), "head")
    assert client.get("/readyz").status_code == 200
