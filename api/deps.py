"""Dependencies as ``Annotated`` aliases, so handlers declare what they need in one word.

The settings come from the app (``create_app(settings)``) rather than a global, so a test can
build an app with small limits without touching the process environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.errors import NotJson, content_type, is_json_request
from services.config import Settings
from services.csv_data import parse_csv
from services.errors import InvalidInput
from services.spec import DatasetCreate


async def get_app_settings(request: Request) -> Settings:  # async: no thread hop (see api.auth)
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def known_query(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming it, not ignored: a misspelt or
    unsupported filter (``/v1/sweeps?status=succeeded``) answered as if it had filtered."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    known = _query_names(route)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        takes = ", ".join(sorted(known)) or "no query parameters"
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name),
                                       "msg": f"unknown query parameter; this endpoint takes {takes}",
                                       "input": request.query_params[name]} for name in unknown])


_QUERY_NAMES: dict[int, frozenset[str]] = {}  # by id of a route (routes live as long as the app)


def _query_names(route: object) -> frozenset[str]:
    """The query parameters a route declares (its dependencies' too), by their names on the wire."""
    names = _QUERY_NAMES.get(id(route))
    if names is None:
        names = _QUERY_NAMES[id(route)] = frozenset(_declared_query(route.dependant))
    return names


def _declared_query(dependant: Any) -> Iterator[str]:
    yield from (param.alias for param in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _declared_query(sub)


CSV_TYPES = ("text/csv", "application/csv")


async def dataset_body(request: Request) -> DatasetCreate:
    """One endpoint takes JSON, a CSV body, or a multipart upload (field ``file``).

    Parsing a CSV into matrices is pure (``services.csv_data.parse_csv``); storing it is the
    handler's one use case call.
    """
    kind = content_type(request)
    if not (kind in CSV_TYPES or kind == "multipart/form-data" or is_json_request(request)):
        raise NotJson(f"application/json, {', '.join(CSV_TYPES)} or multipart/form-data")
    try:
        if kind in CSV_TYPES:
            return _from_csv(await request.body(), ("csv",))
        if kind == "multipart/form-data":
            return await _from_upload(request)
        return DatasetCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc
    except InvalidInput as exc:
        raise RequestValidationError([{"loc": ("body", *exc.loc), "msg": exc.message, "type": "value_error"}]) from exc


async def _from_upload(request: Request) -> DatasetCreate:
    form = await request.form(max_files=1, max_fields=10)
    upload = form.get("file")
    if upload is None:
        raise InvalidInput(("file",), "multipart upload needs a file field named 'file'")
    if isinstance(upload, str):  # a part without a filename, e.g. curl -F 'file=<data.csv'
        raise InvalidInput(("file",), "is a plain form field, not a file: send the CSV as a file part with a "
                                      "filename (e.g. curl -F file=@data.csv)")
    for name in form:
        if name != "file":
            raise InvalidInput((name,), "unknown field: a multipart upload has one field, 'file'")
    return _from_csv(await upload.read(), ("file",))


def _from_csv(raw: bytes, loc: tuple[str, ...]) -> DatasetCreate:
    """``loc``: where the CSV is in the body (``("csv",)`` for a CSV body, ``("file",)`` for an
    upload); its errors are located there, under ``body`` (``dataset_body`` adds it)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(loc, f"CSV must be UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    x, y = parse_csv(text, loc)
    return DatasetCreate(x=x, y=y)


DatasetBody = Annotated[DatasetCreate, Depends(dataset_body)]
