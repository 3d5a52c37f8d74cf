"""``GET /metrics``: Prometheus's text format, event metrics of every process that shares this
API's metrics folder plus the gauges read from the database. With auth on, only the operators'
metrics key reads them (they name every tenant's sweeps)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.auth import MetricsReader
from services.metrics_export import render

router = APIRouter(tags=["metrics"])
PATH = "/metrics"


@router.get(PATH, include_in_schema=False, dependencies=[MetricsReader])
def read_metrics() -> Response:
    return Response(content=render(), media_type=CONTENT_TYPE_LATEST)
