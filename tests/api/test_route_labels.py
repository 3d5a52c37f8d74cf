"""The ``route`` label of the request metrics (api/metrics.py): the template of the route that
served the request, for every route (those of included routers, and those left out of the
OpenAPI schema, such as the page at ``/``), and ``unmatched`` for a path no route serves; never
the path a client typed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import RequestMetrics, Routes
from services import metrics_export

Counts = dict[tuple[str, str, str], float]


def requests_counted() -> Counts:
    """(method, route, code) -> descent_http_requests_total, as this process exports it."""
    text = metrics_export.render().decode()
    return {(s.labels["method"], s.labels["route"], s.labels["code"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "descent_http_requests_total"}


@pytest.fixture
def counted() -> Callable[[], Counts]:
    """What the requests made since the fixture started added to the counter."""
    before = requests_counted()

    def grown() -> Counts:
        return {key: value - before.get(key, 0) for key, value in requests_counted().items()
                if value != before.get(key, 0)}

    return grown


def test_the_page_and_its_files_are_labelled_by_their_templates(client: TestClient, counted) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/no-such-file.js").status_code == 404  # the route answered the 404
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/jobs/some-job-id").status_code == 404
    grew = counted()
    assert grew[("GET", "/", "200")] == 1
    assert grew[("GET", "/static/{name}", "200")] == 1
    assert grew[("GET", "/static/{name}", "404")] == 1
    assert grew[("GET", "/healthz", "200")] == 1
    assert grew[("GET", "/v1/jobs/{job_id}", "404")] == 1
    assert ("GET", "unmatched", "200") not in grew


def test_paths_no_route_serves_are_unmatched_and_never_a_label(client: TestClient, counted) -> None:
    typed = ["/nope/1", "/static/a/b", "/v1/jobs/a/b/c", "/favicon.ico", "//v1/jobs"]
    for path in typed:
        assert client.get(path).status_code == 404, path
    grew = counted()
    assert grew == {("GET", "unmatched", "404"): len(typed)}
    routes = {route for _, route, _ in requests_counted()}
    assert not any(path in routes for path in typed if path != "/")


def test_answers_given_before_or_beside_routing_keep_their_template(client: TestClient, counted) -> None:
    """A body declared over the limit is refused before routing (api/limits.py), and a wrong
    method is the route's 405: both are labelled by the path's template all the same."""
    too_big = client.post("/v1/jobs", content=b"{}", headers={"content-length": str(10**10)})
    assert too_big.status_code == 413
    assert client.delete("/healthz").status_code == 405
    grew = counted()
    assert grew[("POST", "/v1/jobs", "413")] == 1
    assert grew[("DELETE", "/healthz", "405")] == 1


def test_a_chosen_route_is_labelled_by_lookup_not_by_matching_every_template(client: TestClient) -> None:
    """The hot path: the route the router left in the scope is looked up; the patterns are only
    for requests that reached no route. Every route of the app is in the lookup table."""
    client.get("/healthz")  # the middleware reads the app's routes at its first request
    stack, found = client.app.middleware_stack, None
    while stack is not None and found is None:
        found = stack if isinstance(stack, RequestMetrics) else None
        stack = getattr(stack, "app", None)
    assert found is not None and found._routes is not None
    routes = found._routes
    served = {template for _, template in routes.patterns}
    assert {"/", "/static/{name}", "/metrics", "/healthz", "/v1/jobs/{job_id}", "/v1/sweeps/{sweep_id}"} <= served
    routes.patterns = []  # from here on, only the lookup can label
    before = requests_counted()
    assert client.get("/").status_code == 200
    assert client.get("/static/app.js").status_code == 200
    after = requests_counted()
    assert after[("GET", "/", "200")] - before.get(("GET", "/", "200"), 0) == 1
    assert after[("GET", "/static/{name}", "200")] - before.get(("GET", "/static/{name}", "200"), 0) == 1


def test_nested_routers_and_one_router_under_two_prefixes() -> None:
    """Templates carry every prefix; a route object included twice has no single template, so
    the patterns (routing order) decide between its two paths."""
    inner = APIRouter()

    @inner.get("/items/{item_id}")
    def read_item(item_id: str) -> dict:
        return {"id": item_id}

    outer = APIRouter()
    outer.include_router(inner, prefix="/inner")
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(outer, prefix="/a")
    app.include_router(inner, prefix="/b", include_in_schema=False)
    routes = Routes(app.routes)
    assert [template for _, template in routes.patterns] == ["/a/inner/items/{item_id}", "/b/items/{item_id}"]
    app.add_middleware(RequestMetrics)
    labels: list[str] = []
    original = Routes.template

    def noting(self: Routes, scope: dict) -> str:
        labels.append(original(self, scope))
        return labels[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Routes, "template", noting)
        client = TestClient(app)
        for path in ("/a/inner/items/1", "/b/items/2", "/b/items/2/x", "/c"):
            client.get(path)
    assert labels == ["/a/inner/items/{item_id}", "/b/items/{item_id}", "unmatched", "unmatched"]
