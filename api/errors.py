"""The one place where errors become HTTP answers.

Domain errors map to status codes (NotFound 404, Conflict 409, InvalidInput 422, StorageError
503); every 422 has FastAPI's own shape, ``{"detail": [{"loc", "msg", "type"}]}``, so clients
parse one format. Anything unexpected is logged and answered with a JSON 500: a bug, never a
bare HTML page.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.errors import Conflict, DomainError, InvalidInput, NotFound, StorageError

log = logging.getLogger("descent.api")
_SCALARS = (str, int, float, bool, type(None))


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler; ``create_app`` calls this once."""
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ValidationError, _use_case_invalid)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(NotFound, _status(404))
    app.add_exception_handler(Conflict, _status(409))
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(DomainError, _status(400))
    app.add_exception_handler(Exception, _unexpected)


def unprocessable(errors: Iterable[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": list(errors)})


def clean_errors(errors: Sequence[Any], prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Make pydantic errors JSON-safe and precise.

    An ``InvalidInput`` raised inside a model validator reaches us as a ``value_error`` located
    at the model; its own ``loc`` is appended so the answer names the field. Large inputs are
    not echoed back (a 16 MiB body would come back in the error).
    """
    cleaned = []
    for err in errors:
        loc, msg = [*prefix, *err.get("loc", ())], err.get("msg", "invalid value")
        ctx = dict(err.get("ctx") or {})
        cause = ctx.get("error")
        if isinstance(cause, InvalidInput):
            loc, msg = [*loc, *cause.loc], cause.message
            del ctx["error"]
        item: dict[str, Any] = {"loc": loc, "msg": msg, "type": err.get("type", "value_error")}
        if "input" in err and _echoable(err["input"]):
            item["input"] = err["input"]
        if ctx := {k: v if _echoable(v) else str(v) for k, v in ctx.items()}:
            item["ctx"] = ctx
        cleaned.append(item)
    return cleaned


def _echoable(value: object) -> bool:
    """Short scalars only; NaN and Infinity cannot be written as JSON at all."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, _SCALARS) and len(str(value)) <= 200


def invalid_input_error(exc: InvalidInput, where: str = "body") -> dict[str, Any]:
    return {"loc": [where, *exc.loc], "msg": exc.message, "type": "value_error"}


async def _request_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return unprocessable(clean_errors(exc.errors()))


async def _use_case_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return unprocessable(clean_errors(exc.errors(include_url=False), prefix=("body",)))


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    """A use case names a field: of the query string for a GET (the only kind that has one
    here), of the body otherwise."""
    assert isinstance(exc, InvalidInput)
    where = "query" if request.method in ("GET", "HEAD") else "body"
    return unprocessable([invalid_input_error(exc, where)])


def _status(code: int):  # noqa: ANN202 (a handler factory)
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=code, content={"detail": str(exc)})

    return handler


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("storage error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=503, content={"detail": "storage unavailable, retry later"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal server error"})
