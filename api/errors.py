"""The one place where errors become HTTP answers: RFC 9457 problem details, one format for all.

Every 4xx and 5xx is ``application/problem+json``::

    {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
     "detail": "body.data.x[3][0]: Input should be a valid number", "instance": "/v1/jobs",
     "errors": [{"loc": ["body", "data", "x", 3, 0], "pointer": "/data/x/3/0",
                 "msg": "Input should be a valid number", "type": "float_type"}]}

``errors`` (validation answers only) lists each field at fault: ``loc`` is its path in the
request, starting with where it is (``body``, ``query``, ``path``, ``header``), then the keys
and indices of the client's own JSON; ``pointer`` (JSON bodies only) is the same path as an RFC
6901 JSON Pointer into the body. Domain errors map to statuses here (NotFound 404, Conflict
409, InvalidInput 422, Unauthorized 401, Forbidden 403, TooMany 429, StorageError 503);
anything unexpected is logged and answered 500, a bug. Nothing a client sent is echoed back but
field names, shortened and made valid Unicode, so an answer can always be written (lone
surrogates, huge inputs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from api.auth import refused_key
from services.errors import (
    Conflict, DomainError, Forbidden, InvalidInput, NotFound, StorageError, TooMany, Unauthorized,
)

log = logging.getLogger("descent.api")

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5  # a storage outage: the database restarts within seconds (docs/design.md, "Faults")
MAX_ERRORS = 20  # field errors listed in one answer; ``detail`` says how many there were
MAX_TEXT = 500  # characters of any message; longer ones are cut
MAX_KEY = 100  # characters of a key in a ``loc``


class FieldError(BaseModel):
    """One field at fault."""

    loc: list[str | int] = Field(description="Where: body/query/path/header, then keys and indices")
    pointer: str | None = Field(default=None, description="RFC 6901 pointer into a JSON body")
    msg: str
    type: str = Field(description="A machine-readable kind, e.g. float_type, missing, value_error")


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` only on validation answers."""

    type: str = Field(default="about:blank", description="Always about:blank: the status says what it is")
    title: str = Field(description="The status's phrase")
    status: int
    detail: str = Field(description="What went wrong, for a person")
    instance: str | None = Field(default=None, description="The request's path")
    errors: list[FieldError] | None = None


# --- building answers ---------------------------------------------------------------------------


def problem(status: int, detail: str, *, instance: str | None = None, errors: Sequence[dict[str, Any]] | None = None,
            headers: dict[str, str] | None = None, extensions: dict[str, Any] | None = None) -> JSONResponse:
    """A problem-details answer; every string in it is made writable first. ``extensions`` are
    members of the caller's own (RFC 9457, section 3.2), e.g. ``{"failing": {...}}``."""
    return JSONResponse(problem_content(status, detail, instance=instance, errors=errors, extensions=extensions),
                        status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_content(status: int, detail: str, *, instance: str | None = None,
                    errors: Sequence[dict[str, Any]] | None = None,
                    extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = dict(extensions or {})
    content |= {"type": "about:blank", "title": _title(status), "status": status, "detail": _text(detail)}
    if instance is not None:
        content["instance"] = _text(instance)
    if errors is not None:
        content["errors"] = list(errors)[:MAX_ERRORS]
    return content


def field_error(loc: Sequence[Any], msg: str, kind: str, *, json_body: bool = True) -> dict[str, Any]:
    """One entry of ``errors``; ``pointer`` when the location is in a JSON body."""
    clean = [part if type(part) is int else _text(str(part), MAX_KEY) for part in loc]
    error: dict[str, Any] = {"loc": clean, "msg": _text(msg), "type": _text(kind, MAX_KEY)}
    if json_body and clean[:1] == ["body"]:
        error["pointer"] = "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in clean[1:])
    return error


def unprocessable(errors: Sequence[dict[str, Any]], instance: str | None = None,
                  total: int | None = None) -> JSONResponse:
    """422 listing ``errors`` (from ``field_error``; ``total`` of them, if more were found);
    ``detail`` names the first ones."""
    return problem(422, summary(errors, total), instance=instance, errors=errors)


def summary(errors: Sequence[dict[str, Any]], total: int | None = None) -> str:
    shown = "; ".join(f"{dotted(e['loc'])}: {e['msg']}" for e in errors[:3])
    more = max(total or 0, len(errors)) - 3
    return shown + (f" (and {more} more)" if more > 0 else "") if errors else "invalid request"


def dotted(loc: Sequence[Any]) -> str:
    """["body", "data", "x", 3, 0] -> body.data.x[3][0]."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}  # RFC 9110's names, whatever the Python


def _title(status: int) -> str:
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _text(value: str, limit: int = MAX_TEXT) -> str:
    """Valid Unicode (lone surrogates become U+FFFD), at most ``limit`` characters."""
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


# --- pydantic errors -> field errors ------------------------------------------------------------


def clean_errors(errors: Iterable[Any], *, json_body: bool = True) -> list[dict[str, Any]]:
    """Pydantic's errors as ``field_error`` entries.

    An ``InvalidInput`` raised inside a model validator reaches us as a ``value_error`` located
    at the model; its own ``loc`` continues the path and its message replaces pydantic's. A JSON
    syntax error is located at the body, its position given in the message.
    """
    cleaned = []
    for err in errors:
        loc, msg, kind = tuple(err.get("loc", ())), err.get("msg", "invalid value"), err.get("type", "value_error")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidInput):
            loc, msg = (*loc, *cause.loc), cause.message
        elif kind == "json_invalid":
            loc, msg = loc[:1], _json_message(loc, err)
        elif kind == "value_error" and msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        cleaned.append(field_error(loc, msg, kind, json_body=json_body))
        if len(cleaned) >= MAX_ERRORS:
            break
    return cleaned


def _json_message(loc: Sequence[Any], err: dict[str, Any]) -> str:
    reason = (err.get("ctx") or {}).get("error") or err.get("msg") or "invalid JSON"
    position = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
    return f"body is not valid JSON: {reason}{position}"


def invalid_input_error(exc: InvalidInput, where: str = "body", *, json_body: bool = True) -> dict[str, Any]:
    return field_error((where, *exc.loc), exc.message, "value_error", json_body=json_body)


# --- handlers -----------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler; ``create_app`` calls this once."""
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(NotJson, _not_json)
    app.add_exception_handler(NotFound, _status(404))
    app.add_exception_handler(Conflict, _status(409))
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(Forbidden, _status(403))
    app.add_exception_handler(TooMany, _too_many)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(DomainError, _status(400))
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def content_type(request: Request) -> str:
    """The media type the client declared, lower case, without parameters ("" when none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def is_json_request(request: Request) -> bool:
    """Whether the body was read as JSON: FastAPI (strict content type, its default) reads a body
    as JSON only when the client says it is; the datasets endpoint does the same."""
    kind = content_type(request)
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class NotJson(Exception):
    """A body in a media type the endpoint does not read (a 415); ``accepted`` names those it does."""

    def __init__(self, accepted: str) -> None:
        super().__init__(accepted)
        self.accepted = accepted


async def _not_json(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotJson)
    if (refusal := await refused_key(request)) is not None:
        return await _unauthorized(request, refusal)
    return not_json(request, exc.accepted)


def not_json(request: Request, accepted: str = "application/json") -> JSONResponse:
    """415 for a body declared as something else (or not declared): a request that reached the
    handler as bytes, not as the JSON it holds, would otherwise read "body: should be an object"."""
    declared = content_type(request)
    said = f"Content-Type {declared}" if declared else "no Content-Type"
    return problem(415, f"body: send it with Content-Type {accepted} (the request has {said})",
                   instance=request.url.path)


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    """422, unless the request lacks a valid key: that is its first fault (see ``refused_key``)."""
    assert isinstance(exc, RequestValidationError)
    if (refusal := await refused_key(request)) is not None:
        return await _unauthorized(request, refusal)
    errors, json_body = exc.errors(), is_json_request(request)
    if not json_body and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        return not_json(request)  # FastAPI left the body as bytes
    return unprocessable(clean_errors(errors, json_body=json_body), request.url.path, len(errors))


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    """A use case names a field: of the query string for a GET (the only kind that has one
    here), of the body otherwise."""
    assert isinstance(exc, InvalidInput)
    where = "query" if request.method in ("GET", "HEAD") else "body"
    return unprocessable([invalid_input_error(exc, where, json_body=is_json_request(request))], request.url.path)


def _status(code: int):  # noqa: ANN202 (a handler factory)
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return problem(code, str(exc), instance=request.url.path)

    return handler


async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unauthorized)
    return problem(401, exc.message, instance=request.url.path, headers={"WWW-Authenticate": "Bearer"})


async def _too_many(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TooMany)
    return problem(429, exc.message, instance=request.url.path, headers={"Retry-After": str(exc.retry_after)})


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("storage error on %s %s: %s", request.method, request.url.path, exc)
    return problem(503, "storage unavailable, retry later", instance=request.url.path,
                   headers={"Retry-After": str(RETRY_AFTER_S)})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own answers (404 no route, 405, 413 from ``api.limits``, a
    body that is not JSON) in the same format. FastAPI answers a body it cannot decode (not
    UTF-8, nested too deeply) with a bare 400; that is a malformed body, a 422 like bad JSON."""
    assert isinstance(exc, HTTPException)
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, (UnicodeDecodeError, RecursionError, ValueError)):
        if (refusal := await refused_key(request)) is not None:  # as for a body that is not JSON
            return await _unauthorized(request, refusal)
        message = _undecodable(cause)
        return unprocessable([field_error(("body",), message, "json_invalid")], request.url.path)
    detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (methods := _documented_methods(request)):
        headers["Allow"] = ", ".join(methods)
    return problem(exc.status_code, detail, instance=request.url.path, headers=headers or None)


def _documented_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document gives this path: Starlette's 405 names only those of
    the first route that matched (POST of ``/v1/jobs``, not its GET)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {method.upper() for method in operations if method.upper() in _HTTP_METHODS}
    return sorted(methods)


_HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"}


def _undecodable(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"body is not valid JSON: not UTF-8 text ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "body is not valid JSON: nested too deeply"
    return f"body is not valid JSON: {cause}"


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal server error", instance=request.url.path)


# --- OpenAPI ------------------------------------------------------------------------------------

_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Always `Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}},
}
_DESCRIPTIONS = {
    400: "Malformed request (e.g. a multipart body that cannot be parsed)",
    401: "No API key, or one that names no tenant",
    403: "A valid key that may not do this",
    404: "Not found",
    409: "Conflict with the resource's state",
    413: "Request body larger than the configured limit (max_body_bytes)",
    415: "Body not declared as JSON (`Content-Type: application/json`; datasets also take CSV and multipart)",
    422: "Invalid input; `errors` names each field at fault",
    429: "A quota or rate limit is exhausted",
    503: "Storage unavailable; retry after Retry-After seconds",
}


def problem_response(status: int, description: str | None = None) -> dict[str, Any]:
    """One documented problem answer (an OpenAPI response object)."""
    answer: dict[str, Any] = {
        "description": description or _DESCRIPTIONS.get(status, _title(status)),
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in _HEADERS:
        answer["headers"] = _HEADERS[status]
    return answer


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: problem_response(status) for status in statuses}


# What every operation of a router may answer (``include_router(..., responses=...)``); an
# operation's own (404, 409...) are added to these, and ``document_problems`` adds 400, 413
# and 415 to those with a body. 401 and 429 come with API keys and quotas.
COMMON = problem_responses(401, 422, 429, 503)


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Give every documented 4xx/5xx answer the problem-details body (route modules declare
    theirs as ``{404: {"description": ...}}``), and the components it refers to. Operations
    with a body also answer 400, 413 and 415 whatever their router says."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    models = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(models.pop("$defs", {}))
    components["Problem"] = models
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            answers = operation["responses"]
            if "requestBody" in operation:
                for status in (400, 413, 415, 422):
                    answers.setdefault(str(status), problem_response(status))
            for status, answer in list(answers.items()):
                if status[:1] in ("4", "5") and _undescribed(answer):
                    answers[status] = problem_response(int(status), answer.get("description"))
    return schema


def _undescribed(answer: dict[str, Any]) -> bool:
    """No body documented, or FastAPI's own validation error body (which we never send)."""
    content = answer.get("content")
    return not content or "HTTPValidationError" in str(content)
