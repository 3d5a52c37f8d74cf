"""Request body cap, enforced before anything parses the body.

FastAPI and Starlette read a whole body into memory without a limit (fastapi#1181), so this is
a pure ASGI middleware: a declared ``Content-Length`` over the cap is refused before reading a
byte, and bodies without one (chunked) are counted as they stream in and cut off at the cap.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PROBLEM_JSON, problem_content


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI's body parsing re-raises it as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes (max_body_bytes)")


class BodySizeLimit:
    """Answer 413 for any HTTP request whose body is larger than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _reply(send, scope, 413, BodyTooLarge(self.max_bytes).detail)
            return
        started, seen = False, 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            # Normally the app's HTTPException handler answers; this covers code that does not.
            if started:
                raise
            await _reply(send, scope, exc.status_code, exc.detail)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send: Send, scope: Scope, status: int, detail: str) -> None:
    """The problem-details answer ``api.errors`` would give, written without the app."""
    content = problem_content(status, detail, instance=scope.get("path"))
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
