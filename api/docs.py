"""The API's documentation: the OpenAPI document and the pages that show it.

- ``/openapi.json`` is FastAPI's, completed: every error answer has the problem-details body
  (``api.errors.document_problems``), each value bounded by a setting (``x-limit`` in the
  schema, ``services.spec``) shows this deployment's limit as its ``maximum`` or ``maxItems``,
  and each create links to the operations on what it made.
- ``/docs`` (Swagger UI) and ``/redoc`` are served with their assets from this process, never a
  CDN, so they work on a machine without internet. The assets come from the ``fastapi-offline``
  package (Swagger UI's bundle and CSS, ReDoc's standalone bundle); ReDoc loads no Google Fonts.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.auth import document_security
from api.errors import document_problems
from services.config import Settings
from services.spec import INT64_MAX

ASSETS = "/docs-assets"
_FILES = files("fastapi_offline") / "static"


def install_docs(app: FastAPI) -> None:
    """Serve the two documentation pages; build the app with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=str(_FILES)), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def read_swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{title} - Swagger UI",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            # No badge from validator.swagger.io: the page makes no request to another host.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def read_swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def read_redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` return the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # caches itself in app.openapi_schema
            document_security(document_links(document_limits(document_problems(schema), settings)))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_limits(schema: Any, settings: Settings) -> Any:
    """Every ``{"x-limit": name}`` gets the setting's value as its bound (the lower of it and a
    fixed bound already there): ``maximum`` for a number, ``maxItems`` for a list. Integer
    bounds are written as integers (FastAPI's document models hold them as floats, and 2**63 - 1
    as a float is 2**63, a value the API refuses)."""
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            for key in ("minimum", "maximum"):
                if isinstance(schema.get(key), float):
                    schema[key] = max(-INT64_MAX - 1, min(int(schema[key]), INT64_MAX))
        name = schema.get("x-limit")
        if isinstance(name, str) and isinstance(value := getattr(settings, name, None), int):
            bound = "maxItems" if schema.get("type") == "array" else "maximum"
            schema[bound] = min(schema.get(bound, value), value)
        for item in schema.values():
            document_limits(item, settings)
    elif isinstance(schema, list):
        for item in schema:
            document_limits(item, settings)
    return schema


def document_links(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links from each create (a POST answering 201) to every operation on what it made:
    ``POST /v1/jobs`` -> ``GET /v1/jobs/{job_id}``, ``.../history``, ``.../predict``... with the
    path parameter taken from the answer's ``id`` (tools such as schemathesis follow them)."""
    paths = schema.get("paths", {})
    for path, item in paths.items():
        created = item.get("post", {}).get("responses", {}).get("201")
        if created is None:
            continue
        links = {}
        for other, operations in paths.items():
            if not other.startswith(path + "/{"):
                continue
            parameter = other[len(path) + 2: other.index("}", len(path))]
            for operation in operations.values():
                if isinstance(operation, dict) and "operationId" in operation:
                    links[operation["operationId"]] = {"operationId": operation["operationId"],
                                                       "parameters": {parameter: "$response.body#/id"}}
        if links:
            created["links"] = links
    return schema
