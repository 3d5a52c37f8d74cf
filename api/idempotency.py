"""The ``Idempotency-Key`` header of the create endpoints: its parsing, its OpenAPI answers, and
the answer to a replay (200 and ``Idempotent-Replayed: true`` instead of 201)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Header, Response
from pydantic import BaseModel, BeforeValidator

from api.errors import problem_response
from services.errors import InvalidInput
from services.idempotency import HEADER, Created

MAX_LENGTH = 255
PATTERN = r"^[\x20-\x7e]+$"  # printable ASCII; in the schema, and checked by ``_valid_key``
_PRINTABLE = re.compile(PATTERN)


def _valid_key(value: object) -> object:
    """Runs before the header's declared constraints (which are there for the OpenAPI document),
    so a bad key gets one message that says what a key is, not pydantic's pattern text."""
    if isinstance(value, str) and not (len(value) <= MAX_LENGTH and _PRINTABLE.fullmatch(value)):
        raise InvalidInput((), f"must be 1 to {MAX_LENGTH} printable ASCII characters")
    return value


IdempotencyKey = Annotated[
    str | None,
    # Lower case like every header FastAPI names: a 422 locates it as ["header", "idempotency-key"].
    Header(alias=HEADER.lower(), min_length=1, max_length=MAX_LENGTH, pattern=PATTERN, description=(
        f"Any 1 to {MAX_LENGTH} printable ASCII characters, new for each new request. A retry with the "
        f"same key and request gets the first answer's resource as it is now (200), for "
        f"DESCENT_IDEMPOTENCY_KEY_TTL seconds (24 h); the same key with another request is refused (409).")),
    BeforeValidator(_valid_key),
]


def responses(model: type) -> dict[int | str, dict[str, Any]]:
    """The create's extra answers in OpenAPI (and the 201's ``Location``)."""
    return {
        201: {"description": "Created", "headers": {
            "Location": {"description": "The new resource's URL", "schema": {"type": "string"}}}},
        200: {"model": model, "description": f"A retry with the same {HEADER}: the resource it made, as it is now",
              "headers": {"Idempotent-Replayed": {"description": "Always `true`", "schema": {"type": "string"}}}},
        409: problem_response(409, f"This {HEADER} was used for another request"),
    }


def answer(created: Created[BaseModel], location: str | None = None) -> Response:
    """The created resource as JSON: 201 with ``Location`` (``location`` with ``{id}`` replaced
    by the resource's id, e.g. ``"/v1/jobs/{id}"``), or 200 with ``Idempotent-Replayed: true``
    for a replay. Serialized here, once: the model was validated when it was built, and
    FastAPI's second validation of a returned model was a third of a submit's time in the API."""
    if created.replayed:
        headers = {"Idempotent-Replayed": "true"}
    else:
        headers = {} if location is None else {"Location": location.replace("{id}", str(getattr(created.value, "id")))}
    return Response(created.value.model_dump_json(), status_code=200 if created.replayed else 201,
                    media_type="application/json", headers=headers)
