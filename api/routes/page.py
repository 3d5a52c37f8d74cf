"""The embedded stack's page at ``/``: static files that use the same HTTP API as everyone else.

``descent up`` has no Grafana, so the API serves a small page of plain HTML, JavaScript and CSS
(``api/static``, shipped as package data; no framework, nothing fetched from elsewhere).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Path as PathParam
from fastapi.responses import FileResponse

from services.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "static"
# Looked up by name, so a request can never reach outside the folder.
_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}


@router.get("/")
def read_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
def read_static(name: Annotated[str, PathParam(max_length=100)]) -> FileResponse:
    path = _FILES.get(name)
    if path is None:
        raise NotFound("file", name)
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})
