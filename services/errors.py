"""Domain errors. The API maps them to HTTP in one place (``api/errors.py``)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a use case raises on purpose."""


class NotFound(DomainError):
    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident} not found")
        self.kind, self.ident = kind, ident


class Conflict(DomainError):
    """The request is valid but the resource's state forbids it (e.g. cancel a finished job)."""


class InvalidInput(DomainError, ValueError):
    """A field of a request is wrong; ``loc`` names it like pydantic does.

    It is a ValueError so that pydantic validators may raise it and get a 422 with the location.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        # Valid text even when a key in ``loc`` is not (pydantic cannot carry a lone surrogate).
        text = f"{'.'.join(map(str, loc))}: {message}"
        super().__init__(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
        self.loc, self.message = loc, message


class ShapeMismatch(InvalidInput):
    """Data whose width does not fit the layers (or y's rows not x's): located at the data, and
    ``layers_loc`` names the field it disagrees with, relative to the same model as ``loc`` (a
    sweep that varies that field blames its value there)."""

    def __init__(self, loc: tuple[str | int, ...], message: str, layers_loc: tuple[str | int, ...]) -> None:
        super().__init__(loc, message)
        self.layers_loc = layers_loc


class Unauthorized(DomainError):
    """No credentials, or credentials that name no one (HTTP 401 with ``WWW-Authenticate``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TooMany(DomainError):
    """A quota or rate is exhausted; the client may try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, max(1, int(retry_after))


class StorageError(DomainError):
    """The database failed; raised instead of driver errors so callers need not know the driver."""


class Forbidden(DomainError):
    """A known key that may not do this (a tenant's key on the operators' ``/metrics``): 403."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
