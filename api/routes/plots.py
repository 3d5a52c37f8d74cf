"""Plot endpoints (PNG pictures of a job or a sweep, drawn from stored history and checkpoints)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["plots"])
