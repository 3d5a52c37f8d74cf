"""The embedded stack's page at ``/``: static files that use the same HTTP API as everyone else."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
