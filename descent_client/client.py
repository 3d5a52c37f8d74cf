"""``Client``: the HTTP API in Python, typed with the API's own pydantic models (one schema).

Sync httpx. Every request is retried on connection errors and 503, never on another status:
after the wait a 503's ``Retry-After`` asks for (capped), else with exponential backoff, within
a total budget. Reads and predictions are retried freely, creates with one ``Idempotency-Key``
per logical submit (the server answers a retry with what the first attempt made), cancels by
reading the state back when a retry finds the job already cancelled.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from descent_client.errors import ConnectionFailed, DescentError, InvalidId, NotFound, error_from_response, retry_after
from descent_client.resources import Job, Sweep, as_rows
from services.spec import ID_PATTERN, DatasetRead, JobCreate, JobPage, JobRead, StopSpec
from services.sweep_spec import SweepCreate, SweepPage, SweepRead

DEFAULT_URL = "http://127.0.0.1:8000"  # `descent up`'s address
M = TypeVar("M", bound=BaseModel)
Document = Mapping[str, Any] | BaseModel
_ID = re.compile(ID_PATTERN)


class _Retry(Exception):
    """A 503 to retry; carries the answer (its ``Retry-After``, and the error should retries end)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _Retry))


class Client:
    """``Client(url, key)``; both default to ``DESCENT_URL`` / ``DESCENT_API_KEY``, the URL then
    to the embedded stack's. ``retries``: attempts after the first on connection errors and 503
    (6: about 9 s of backoff, which outlasts ``descent up`` restarting a killed API, 3-6 s
    measured; with 4, 3 s, one call in three failed there, benchmarks/RESULTS.md).
    A 503 with ``Retry-After`` is retried after that many seconds (at most ``max_retry_after``),
    anything else after a backoff of 0.2 s doubling up to ``max_backoff``; a retry whose wait
    would end more than ``retry_budget`` seconds after the first attempt is not made (the error
    is raised, a 503's with its ``retry_after``)."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0,
                 retries: int = 6, max_backoff: float = 3.0, max_retry_after: float = 30.0,
                 retry_budget: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("DESCENT_URL") or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get("DESCENT_API_KEY")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.retries, self.max_backoff = retries, max_backoff
        self.max_retry_after, self.retry_budget = max_retry_after, retry_budget
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- requests --------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                headers: Mapping[str, str] | None = None) -> httpx.Response:
        """One logical request, retried on connection errors and 503; an error status raises
        ``ApiError`` (its subclass by status), no answer ``ConnectionFailed``."""
        try:
            request = self._http.build_request(method, path, json=json, params=_given(params), headers=headers)
        except (TypeError, ValueError) as exc:  # e.g. NaN in a body: JSON has no such number
            raise DescentError(f"cannot send {method} {path}: the body is not valid JSON ({exc})") from None
        return self._send(request)

    def lines(self, path: str, **params: Any) -> Iterator[str]:
        """A streamed answer's lines as they arrive (e.g. a long history as CSV); its start is
        retried like any request, a connection lost midway is ``ConnectionFailed``."""
        response = self._send(self._http.build_request("GET", path, params=_given(params)), stream=True)
        try:
            yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, exc) from exc
        finally:
            response.close()

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        if self._http.is_closed:  # httpx says so with a RuntimeError, which no DescentError catches
            raise DescentError(f"this client of {self.url} is closed (its `with` block ended, or close() "
                               "was called): make a new Client")
        started = time.monotonic()
        retrying = Retrying(retry=retry_if_exception(_transient), wait=self._wait, reraise=True,
                            stop=stop_after_attempt(self.retries + 1) | self._past_budget(started),
                            sleep=lambda seconds: time.sleep(seconds))
        try:
            for attempt in retrying:
                with attempt:
                    response = self._http.send(request, stream=stream)
                    if response.status_code == 503:
                        response.read()
                        response.close()
                        raise _Retry(response)
        except httpx.TransportError as exc:
            raise ConnectionFailed(self.url, exc) from exc
        except _Retry as exc:
            response = exc.response
        if response.is_error:
            response.read()
            response.close()
            raise error_from_response(response)
        return response

    def _wait(self, state: RetryCallState) -> float:
        """What a 503's ``Retry-After`` asks for (at most ``max_retry_after``), else a backoff of
        0.2 s doubling up to ``max_backoff``."""
        failed = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after(failed.response) if isinstance(failed, _Retry) else None
        if asked is not None:
            return min(asked, self.max_retry_after)
        return min(self.max_backoff, 0.2 * 2 ** (state.attempt_number - 1))

    def _past_budget(self, started: float) -> Callable[[RetryCallState], bool]:
        """Stop rather than wait past ``retry_budget`` seconds after the first attempt (read on
        this module's clock: tenacity computes the wait before it asks whether to stop)."""
        return lambda state: time.monotonic() + state.upcoming_sleep - started > self.retry_budget

    def get(self, path: str, model: type[M], **params: Any) -> M:
        return self._parse(model, self.request("GET", path, params=params))

    def post(self, path: str, model: type[M], body: Any = None, *, idempotent: bool = False,
             idempotency_key: str | None = None) -> M:
        """``idempotent``: send an ``Idempotency-Key`` (given, or new for this call) so that a
        retried create makes one resource."""
        key = idempotency_key or (uuid.uuid4().hex if idempotent else None)
        headers = {"Idempotency-Key": key} if key else None
        return self._parse(model, self.request("POST", path, json=body, headers=headers))

    def _parse(self, model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            where = f"{response.request.method} {response.request.url}"
            raise DescentError(f"unexpected answer to {where}: not a {model.__name__} "
                               f"({exc.error_count()} errors); is {self.url} a Descent API?") from exc

    # --- jobs --------------------------------------------------------------------------------

    def submit(self, spec: JobCreate | Document, *, idempotency_key: str | None = None) -> Job:
        """Submit a job (a ``JobCreate`` or its JSON document, validated by the server)."""
        body = _document(spec)
        read = self.post("/v1/jobs", JobRead, body, idempotent=True, idempotency_key=idempotency_key)
        return Job(self, read, max_steps=_max_steps(body))

    def job(self, job_id: str) -> Job:
        return Job(self, self.get(f"/v1/jobs/{resource_path(job_id, 'job')}", JobRead))

    def jobs(self, *, status: str | None = None, sweep_id: str | None = None, limit: int | None = None,
             page_size: int = 100) -> Iterator[JobRead]:
        """Newest first, following the cursor; at most ``limit`` jobs (all when None)."""
        yield from _pages(lambda cursor, size: self.get("/v1/jobs", JobPage, status=status, sweep_id=sweep_id,
                                                       limit=size, cursor=cursor), limit, page_size)

    # --- sweeps ------------------------------------------------------------------------------

    def sweep(self, spec: SweepCreate | Document, *, idempotency_key: str | None = None) -> Sweep:
        """Submit a sweep (all members validated before any is stored)."""
        read = self.post("/v1/sweeps", SweepRead, _document(spec), idempotent=True, idempotency_key=idempotency_key)
        return Sweep(self, read)

    def get_sweep(self, sweep_id: str) -> Sweep:
        return Sweep(self, self.get(f"/v1/sweeps/{resource_path(sweep_id, 'sweep')}", SweepRead))

    def sweeps(self, *, limit: int | None = None, page_size: int = 100) -> Iterator[SweepRead]:
        yield from _pages(lambda cursor, size: self.get("/v1/sweeps", SweepPage, limit=size, cursor=cursor),
                          limit, page_size)

    def find(self, resource_id: str) -> Job | Sweep:
        """The job with this id, else the sweep; ``NotFound`` naming both when neither exists."""
        resource_path(resource_id, "job or sweep")
        try:
            return self.job(resource_id)
        except NotFound:
            pass
        try:
            return self.get_sweep(resource_id)
        except NotFound as exc:
            raise NotFound(404, f"no job or sweep with id {resource_id}", (), exc.method, exc.path) from None

    # --- datasets ----------------------------------------------------------------------------

    def dataset(self, x: Sequence[Sequence[float]], y: Sequence[Sequence[float]]) -> DatasetRead:
        """Store x/y once (by content); refer to it as ``{"dataset_id": read.id}`` in specs."""
        return self.post("/v1/datasets", DatasetRead, {"x": as_rows(x), "y": as_rows(y)}, idempotent=True)


def resource_path(resource_id: str, kind: str = "resource") -> str:
    """An id as one path segment: checked against the API's id pattern (``InvalidId``, an
    ``InvalidRequest``, before any request) and escaped, so no id can reach another route
    (``../sweeps`` would read ``/v1/sweeps``)."""
    if not isinstance(resource_id, str) or not _ID.fullmatch(resource_id):
        raise InvalidId(422, f"not a {kind} id: {resource_id!r} (an id is 1 to 64 letters, digits, '-' or '_')")
    return quote(resource_id, safe="")


def _given(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if v is not None}


def _document(spec: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object to send; anything but a model or a mapping (a list of pairs, a string)
    is refused, not turned into an object."""
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json", exclude_unset=True)
    if not isinstance(spec, Mapping):
        raise TypeError(f"a spec is a JSON object (a dict) or a model, not {type(spec).__name__}")
    return dict(spec)


def _max_steps(body: Mapping[str, Any]) -> int | None:
    default = StopSpec.model_fields["max_steps"].default
    stop = body.get("stop") or {}
    value = stop.get("max_steps", default) if isinstance(stop, Mapping) else None
    return value if isinstance(value, int) and value > 0 else None


def _pages(fetch: Any, limit: int | None, page_size: int) -> Iterator[Any]:
    cursor, left = None, limit
    while left is None or left > 0:
        size = page_size if left is None else min(page_size, left)
        page = fetch(cursor, size)
        items = page.items[:size]
        yield from items
        if left is not None:
            left -= len(items)
        cursor = page.next_cursor
        if cursor is None or not items:
            return


__all__ = ["DEFAULT_URL", "Client", "resource_path"]
