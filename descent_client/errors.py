"""The client's errors: one line each (``str(exc)``), readable as they are.

An error answer is read in both shapes the API has used: FastAPI's ``{"detail": "text"}`` and
``{"detail": [{"loc", "msg", "type"}]}`` for a 422, and RFC 9457 problem details
(``application/problem+json``: ``title``, ``status``, ``detail`` text, ``errors: [{"loc", "msg",
"type"}]``). Field errors name the field from ``loc`` without its ``body``/``query`` prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

_WHERE = ("body", "query", "path", "header")
UNAUTHORIZED = "unauthorized: set --key or DESCENT_API_KEY"


class DescentError(Exception):
    """Base of every error the client raises; its text is one readable line."""


class ConnectionFailed(DescentError):
    """The API did not answer (after the retries)."""

    def __init__(self, url: str, cause: Exception) -> None:
        reason = str(cause).strip() or type(cause).__name__
        super().__init__(f"cannot reach Descent at {url} ({reason}); is it running (`descent up`)? "
                         f"Set --url or DESCENT_URL")
        self.url = url


class WaitTimeout(DescentError):
    """``wait(timeout=...)`` ran out before the job or sweep finished."""


@dataclass(frozen=True)
class FieldError:
    """One invalid input: ``field`` is the dotted location (``stop.max_steps``, ``data.x[1]``)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ApiError(DescentError):
    """The API answered with an error status; ``status``, ``detail`` text and ``errors``."""

    def __init__(self, status: int, detail: str, errors: tuple[FieldError, ...] = (), method: str = "",
                 path: str = "") -> None:
        self.status, self.detail, self.errors = status, detail, errors
        self.method, self.path = method, path
        super().__init__(self._line())

    def _line(self) -> str:
        if self.errors:
            return f"invalid input: {'; '.join(map(str, self.errors))}"
        if self.detail:
            return f"{self.detail} (HTTP {self.status})"
        return f"HTTP {self.status} on {self.method} {self.path}"


class Unauthorized(ApiError):
    def _line(self) -> str:
        return UNAUTHORIZED


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class InvalidRequest(ApiError):
    """422 (or 400/413): the request was refused; ``errors`` name the fields."""


class TooManyRequests(ApiError):
    """429: a limit of this key's tenant (e.g. its queued jobs); never retried by the client."""


class Unavailable(ApiError):
    """503 after the retries: the service's storage or broker is down."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: InvalidRequest,
    422: InvalidRequest, 429: TooManyRequests, 503: Unavailable,
}


def error_from_response(response: httpx.Response) -> ApiError:
    """The ``ApiError`` for an error answer, whatever its body (JSON of either shape, or text)."""
    detail, errors = parse_error_body(response)
    kind = _BY_STATUS.get(response.status_code, ApiError)
    request = response.request
    return kind(response.status_code, detail, errors, request.method, request.url.path)


def parse_error_body(response: httpx.Response) -> tuple[str, tuple[FieldError, ...]]:
    """``(detail text, field errors)`` from a problem+json, a FastAPI or a non-JSON body."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip().splitlines()
        return (text[0][:200] if text else response.reason_phrase), ()
    if not isinstance(body, dict):
        return str(body)[:200], ()
    detail = body.get("detail")
    items = body.get("errors") if isinstance(body.get("errors"), list) else detail if isinstance(detail, list) else []
    errors = tuple(field_error(item) for item in items if isinstance(item, dict))
    text = detail if isinstance(detail, str) else body.get("title") or ""
    return str(text), errors


def field_error(item: dict[str, Any]) -> FieldError:
    return FieldError(field_name(item.get("loc") or []), str(item.get("msg") or item.get("message") or "invalid"))


def field_name(loc: list[Any] | tuple[Any, ...] | str) -> str:
    """``["body", "data", "x", 1]`` -> ``data.x[1]``; a header keeps its kind: ``header idempotency-key``."""
    if isinstance(loc, str):
        return loc
    parts = list(loc)
    prefix = ""
    if parts and parts[0] in _WHERE:
        prefix = f"{parts[0]} " if parts[0] in ("header", "query") and len(parts) > 1 else ""
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return prefix + name
