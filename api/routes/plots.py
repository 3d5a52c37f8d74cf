"""Plot endpoints (PNG pictures of a job or a sweep, drawn from stored history and checkpoints)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.auth import Tenant
from api.routes.jobs import JobId
from api.routes.sweeps import SweepId
from services import plots

router = APIRouter(tags=["plots"])

_PNG = {200: {"content": {"image/png": {}}, "description": "A PNG picture"}}
_NO_STORE = {"Cache-Control": "no-store"}  # a running job's picture changes


@router.get("/jobs/{job_id}/plot.png", response_class=Response,
            responses={**_PNG, 404: {"description": "No job with this id"}})
def read_job_plot(job_id: JobId, tenant: Tenant) -> Response:
    """Data and fitted curve at step 0 (faint) and the latest checkpoint (one input, one
    output); SSR against the trained parameter with the descent's steps (one trained scalar,
    the StatQuest lesson's picture); the SSR path by step on a log axis."""
    return Response(plots.job_png(job_id, tenant=tenant), media_type="image/png", headers=_NO_STORE)


@router.get("/sweeps/{sweep_id}/plot.png", response_class=Response,
            responses={**_PNG, 404: {"description": "No sweep with this id"}})
def read_sweep_plot(sweep_id: SweepId, tenant: Tenant) -> Response:
    """Members' SSR curves overlaid (early-stopped ones faint) and final SSR against each
    varied value (e.g. the learning-rate sensitivity)."""
    return Response(plots.sweep_png(sweep_id, tenant=tenant), media_type="image/png", headers=_NO_STORE)
