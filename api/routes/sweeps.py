"""Sweep endpoints. Each handler parses, calls one use case of ``services.sweeps``, returns."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api import idempotency
from api.auth import Tenant
from api.idempotency import IdempotencyKey
from services import sweeps
from services.spec import ID_PATTERN
from services.sweep_spec import SweepCreate, SweepPage, SweepRead

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SweepId = Annotated[str, Path(pattern=ID_PATTERN, description="The sweep's id")]
_NOT_FOUND = {404: {"description": "No sweep with this id"}}


@router.post("", status_code=201, response_model=SweepRead, responses=idempotency.responses(SweepRead))
def create_sweep(body: SweepCreate, tenant: Tenant, idempotency_key: IdempotencyKey = None) -> Response:
    """Expand grid x random draws into member jobs; all are validated before any is stored.
    Members are jobs: list them with ``GET /v1/jobs?sweep_id=``."""
    return idempotency.answer(sweeps.submit_sweep_once(body, idempotency_key, tenant=tenant), "/v1/sweeps/{id}")


@router.get("", response_model=SweepPage)
def list_sweeps(
    tenant: Tenant,
    limit: Annotated[int | None, Query(ge=1, description="Page size; at most the configured maximum (max_list_limit)",
                                       json_schema_extra={"x-limit": "max_list_limit"})] = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
) -> SweepPage:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    return sweeps.list_sweeps(limit=limit, cursor=cursor, tenant=tenant)


@router.get("/{sweep_id}", response_model=SweepRead, responses=_NOT_FOUND)
def read_sweep(sweep_id: SweepId, tenant: Tenant) -> SweepRead:
    """Status, member counts by status and stop reason, the best member and the top 10."""
    return sweeps.get_sweep(sweep_id, tenant=tenant)


@router.post("/{sweep_id}/cancel", response_model=SweepRead,
             responses={**_NOT_FOUND, 409: {"description": "Sweep already finished"}})
def cancel_sweep(sweep_id: SweepId, tenant: Tenant) -> SweepRead:
    """Queued members never start; running ones stop at their next checkpoint."""
    return sweeps.cancel_sweep(sweep_id, tenant=tenant)
