"""The FastAPI application: ``uvicorn api.main:app``, or ``create_app(settings)`` in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api.deps import known_query
from api.docs import install_docs, install_openapi
from api.errors import COMMON, install_error_handlers
from api.limits import BodySizeLimit
from api.metrics import RequestMetrics
from api.routes import datasets, health, jobs, metrics, page, plots, sweeps
from services import heap
from services.config import Settings, get_settings
from services.keys import KeyRing
from services.metrics_export import process_exited

DESCRIPTION = """Train packs of small neural networks by gradient descent.

Submit a job (architecture, data, learning rate, stop rules), watch its SSR history, read its
parameters at any checkpoint and run predictions.

Every error is an RFC 9457 problem (`application/problem+json`): `status`, `title`, `detail`,
and for invalid input (422) `errors`, one entry per field at fault whose `loc` is its path in
the request (`["body", "data", "x", 3, 0]`, and `pointer` `/data/x/3/0` for a JSON body).
Statuses: 400 malformed request, 401 missing or unknown API key, 404 unknown id, 409 state
conflict, 413 body too large, 422 invalid input, 429 quota exhausted (`Retry-After`), 503
storage down (`Retry-After`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the environment's (``DESCENT_*``)."""
    settings = settings or get_settings()
    # FastAPI's native OpenTelemetry (off: Descent's metrics are Prometheus's) otherwise looks up
    # the global tracer, meter and logger providers on every request.
    app = FastAPI(title="Descent", version="0.1.0", description=DESCRIPTION, lifespan=_lifespan,
                  docs_url=None, redoc_url=None, telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings = settings
    app.state.keys = KeyRing.from_settings(settings)  # a bad DESCENT_API_KEYS stops the start here
    install_error_handlers(app)
    install_openapi(app, settings)
    install_docs(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, extra_paths=(metrics.PATH,))  # added last: the outermost layer sees every answer
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in (jobs.router, datasets.router, sweeps.router, plots.router):
        app.include_router(router, prefix="/v1", responses=COMMON, dependencies=[Depends(known_query)])
    app.include_router(page.router)
    return app


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    process_exited()


app = create_app()
heap.freeze()  # what uvicorn's process imported and built lives as long as the process
