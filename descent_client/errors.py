"""The client's errors: one line each (``str(exc)``), readable as they are.

An error answer is read in both shapes the API has used: FastAPI's ``{"detail": "text"}`` and
``{"detail": [{"loc", "msg", "type"}]}`` for a 422, and RFC 9457 problem details
(``application/problem+json``: ``title``, ``status``, ``detail`` text, ``errors: [{"loc", "msg",
"type"}]``). Field errors name the field from ``loc`` without its ``body``/``query`` prefix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

_WHERE = ("body", "query", "path", "header")
UNAUTHORIZED = "unauthorized: set --key or DESCENT_API_KEY"
WRONG_KEY = "unauthorized: the API key given (--key or DESCENT_API_KEY) is not valid"


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
    """The API answered with an error status; ``status``, ``detail`` text and ``errors``;
    ``retry_after``: the seconds its ``Retry-After`` header asked to wait (a 429, a 503), or None."""

    def __init__(self, status: int, detail: str, errors: tuple[FieldError, ...] = (), method: str = "",
                 path: str = "", retry_after: float | None = None) -> None:
        self.status, self.detail, self.errors = status, detail, errors
        self.method, self.path, self.retry_after = method, path, retry_after
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


class WrongKey(Unauthorized):
    """A 401 to a request that sent a key: asking for one would send the user looking for a
    setting they have already made."""

    def _line(self) -> str:
        return WRONG_KEY


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class InvalidRequest(ApiError):
    """422 (or 400/413): the request was refused; ``errors`` name the fields."""


class InvalidId(InvalidRequest):
    """An id the API cannot have (not its id pattern), refused before any request is made."""

    def _line(self) -> str:
        return self.detail


class TooManyRequests(ApiError):
    """429: a limit of this key's tenant (e.g. its queued jobs); never retried by the client.
    ``retry_after``: when the server suggests trying again, in seconds."""

    def _line(self) -> str:
        return _with_retry_after(super()._line(), self.retry_after)


class Unavailable(ApiError):
    """503 after the retries: the service's storage or broker is down; ``retry_after`` as the
    server's last answer said."""

    def _line(self) -> str:
        return _with_retry_after(super()._line(), self.retry_after)


def _with_retry_after(line: str, seconds: float | None) -> str:
    return line if seconds is None else f"{line}; retry after {seconds:g} s"


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: InvalidRequest,
    422: InvalidRequest, 429: TooManyRequests, 503: Unavailable,
}


def error_from_response(response: httpx.Response) -> ApiError:
    """The ``ApiError`` for an error answer, whatever its body (JSON of either shape, or text)."""
    detail, errors = parse_error_body(response)
    kind = _BY_STATUS.get(response.status_code, ApiError)
    request = response.request
    if kind is Unauthorized and "authorization" in request.headers:
        kind = WrongKey
    return kind(response.status_code, detail, errors, request.method, request.url.path, retry_after(response))


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """The answer's ``Retry-After`` in seconds (delay-seconds or an HTTP date; never negative),
    or None when it has none or an unreadable one."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


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
