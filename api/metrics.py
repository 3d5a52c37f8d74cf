"""Request metrics as a pure ASGI middleware: it wraps everything, 413s and 500s included, and
labels by route template (``/v1/jobs/{job_id}``), never by the path a client typed, so the
label has as many values as the API has routes (plus ``unmatched`` for paths none serves).

The template is that of the route the router chose: it leaves it in ``scope["route"]``, which a
table built once from the app's routes (those of included routers too, with their prefixes)
turns into its template in one lookup. Only a request that reached no route (a 404 of an unknown
path, a 413 refused before routing) is matched against the templates' patterns, in routing order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from time import perf_counter
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.metrics import HTTP_DURATION, HTTP_REQUESTS

try:  # FastAPI 0.165 keeps an included router as one entry of app.routes (an _IncludedRouter,
    # without a path); this walks its routes, with their prefixes, as FastAPI's OpenAPI does
    from fastapi.routing import iter_route_contexts as _route_contexts
except ImportError:  # FastAPI that copies every included route, prefix and all, into app.routes
    def _route_contexts(routes: Iterable[Any]) -> Iterator[Any]:
        return iter(routes)

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "unmatched"


class RequestMetrics:
    """``extra_paths``: templates served outside the app's routes (every route is found without)."""

    def __init__(self, app: ASGIApp, extra_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.extra_paths = extra_paths
        self._routes: Routes | None = None

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
        if self._routes is None:
            self._routes = Routes(scope["app"].routes, self.extra_paths)
        return self._routes.template(scope)


class Routes:
    """The app's route templates, read once: by route object (what the router left in the
    scope) and as patterns in routing order (for requests that reached no route)."""

    def __init__(self, routes: Iterable[Any], extra: tuple[str, ...] = ()) -> None:
        by_route: dict[int, str | None] = {}
        self.routes: list[Any] = []  # keeps every object keyed by id() below alive
        self.patterns: list[tuple[re.Pattern[str], str]] = []
        for context in _route_contexts(routes):
            regex, template = getattr(context, "path_regex", None), getattr(context, "path_format", None)
            if not isinstance(template, str) or regex is None:
                continue
            self.patterns.append((regex, template))
            # The router leaves the route it chose in the scope: for a route of an included
            # router, that router's own object, whose path lacks the prefix; hence this table.
            # (A RouteContext is made anew by each walk: only the routes themselves are keys.)
            for route in (getattr(context, "original_route", context), getattr(context, "route", context)):
                self.routes.append(route)
                # one route object included under two prefixes has no single template
                known = by_route.setdefault(id(route), template)
                if known != template:
                    by_route[id(route)] = None
        self.patterns += [(compile_path(path)[0], path) for path in extra]
        self.by_route = {key: template for key, template in by_route.items() if template is not None}

    def template(self, scope: Scope) -> str:
        found = self.by_route.get(id(scope.get("route")))
        if found is not None:
            return found
        path = scope["path"]
        return next((template for regex, template in self.patterns if regex.match(path)), UNMATCHED)
