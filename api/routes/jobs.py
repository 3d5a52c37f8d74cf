"""Job endpoints. Each handler parses, calls one use case of ``services.jobs``, returns."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from api import idempotency
from api.auth import Tenant
from api.idempotency import IdempotencyKey
from services import history_formats, jobs
from services.config import Settings
from services.spec import (
    ID_PATTERN, HistoryRead, JobCreate, JobPage, JobRead, JobStatus, ParametersRead, PredictRead, PredictRequest,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=ID_PATTERN, description="The job's id")]
_NOT_FOUND = {404: {"description": "No job with this id"}}
_UNTRAINED = {409: {"description": "The job has no checkpoint yet"}}
BIG = 2**31 - 1  # steps are int32 columns in the database; larger numbers are nonsense
_JSON_POINTS = Settings.model_fields["max_history_points"].default  # the settings' own default, named in the docs


@router.post("", status_code=201, response_model=JobRead, responses=idempotency.responses(JobRead))
async def create_job(spec: JobCreate, tenant: Tenant, idempotency_key: IdempotencyKey = None) -> Response:
    """Validate, store and queue a training job; it starts as ``queued``."""
    return idempotency.answer(await jobs.submit_job_async(spec, idempotency_key, tenant=tenant), "/v1/jobs/{id}")


@router.get("", response_model=JobPage)
def list_jobs(
    tenant: Tenant,
    limit: Annotated[int | None, Query(ge=1, description="Page size; at most the configured maximum (max_list_limit)",
                                       json_schema_extra={"x-limit": "max_list_limit"})] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    sweep_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
) -> JobPage:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    return jobs.list_jobs(status=status, sweep_id=sweep_id, limit=limit, cursor=cursor, tenant=tenant)


@router.get("/{job_id}", response_model=JobRead, responses=_NOT_FOUND)
def read_job(job_id: JobId, tenant: Tenant) -> JobRead:
    return jobs.get_job(job_id, tenant=tenant)


_STREAMS = {media: {"schema": {"type": "string"}} for media in history_formats.MEDIA_TYPES.values()}


@router.get("/{job_id}/history", response_model=HistoryRead,
            responses={**_NOT_FOUND, 200: {"content": _STREAMS, "description": "The history (JSON, or streamed lines)"}})
def read_history(
    job_id: JobId,
    tenant: Tenant,
    every: Annotated[int | None, Query(ge=1, le=BIG, description="Keep every n-th step")] = None,
    max_points: Annotated[int | None, Query(ge=2, le=BIG, description=(
        "Thin to at most this many. With format=json at most the configured max_history_points "
        f"(DESCENT_MAX_HISTORY_POINTS, {_JSON_POINTS:,} unless set; more is a 422); csv and ndjson stream "
        "any length"))] = None,
    format: Annotated[Literal["json", "csv", "ndjson"], Query(  # noqa: A002 (the query's name)
        description="json: one document of at most max_history_points; csv (`step,ssr`) or ndjson "
                    "(`{\"step\", \"ssr\"}` per line): streamed, any length")] = "json",
) -> HistoryRead | StreamingResponse:
    """SSR at every step from 0 to the current one, optionally thinned."""
    if format == "json":
        return jobs.get_history(job_id, every=every, max_points=max_points, tenant=tenant)
    steps, ssr = jobs.history_arrays(job_id, every=every, max_points=max_points, tenant=tenant)
    return StreamingResponse(history_formats.lines(format, steps, ssr), media_type=history_formats.MEDIA_TYPES[format])


@router.get("/{job_id}/parameters", response_model=ParametersRead, responses={**_NOT_FOUND, **_UNTRAINED})
def read_parameters(
    job_id: JobId,
    tenant: Tenant,
    step: Annotated[int | None, Query(ge=0, le=BIG, description="A checkpointed step; latest if absent")] = None,
) -> ParametersRead:
    return jobs.get_parameters(job_id, step=step, tenant=tenant)


@router.post("/{job_id}/predict", response_model=PredictRead, responses={**_NOT_FOUND, **_UNTRAINED})
def predict_job(job_id: JobId, body: PredictRequest, tenant: Tenant) -> PredictRead:
    """Run the network of the latest checkpoint on ``x``."""
    return jobs.predict(job_id, body.x, tenant=tenant)


@router.post("/{job_id}/cancel", response_model=JobRead, responses={**_NOT_FOUND, 409: {"description": "Job already finished"}})
def cancel_job(job_id: JobId, tenant: Tenant) -> JobRead:
    """Queued jobs stop at once (``cancelled``); running ones at their next checkpoint: the answer
    is still ``running`` with ``cancel_requested: true``."""
    return jobs.cancel_job(job_id, tenant=tenant)
