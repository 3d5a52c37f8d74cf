"""Request metrics as a pure ASGI middleware: it wraps everything, 413s and 500s included, and
labels by route template (``/v1/jobs/{job_id}``), never by the path a client typed, so the
label has as many values as the API has routes."""

from __future__ import annotations

import re
from time import perf_counter

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.metrics import HTTP_DURATION, HTTP_REQUESTS

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class RequestMetrics:
    def __init__(self, app: ASGIApp, extra_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.extra_paths = extra_paths
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = self._route(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(perf_counter() - started)

    def _route(self, scope: Scope) -> str:
        if self._templates is None:
            self._templates = _templates(scope["app"], self.extra_paths)
        path = scope["path"]
        return next((template for regex, template in self._templates if regex.match(path)), "unmatched")


def _templates(app: object, extra: tuple[str, ...]) -> list[tuple[re.Pattern[str], str]]:
    """Every path the app serves: its OpenAPI paths, its own top-level routes and ``extra``
    (routes left out of the schema). Read from the app, not from routing internals."""
    paths = set(app.openapi()["paths"]) | {p for r in app.routes if isinstance(p := getattr(r, "path", None), str)}
    return [(compile_path(p)[0], p) for p in sorted(paths | set(extra))]
