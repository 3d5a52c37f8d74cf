"""The FastAPI application: ``uvicorn api.main:app``, or ``create_app(settings)`` in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.metrics import RequestMetrics
from api.routes import datasets, health, jobs, metrics, page, plots, sweeps
from services.config import Settings, get_settings
from services.metrics_export import process_exited

DESCRIPTION = """Train packs of small neural networks by gradient descent.

Submit a job (architecture, data, learning rate, stop rules), watch its SSR history, read its
parameters at any checkpoint and run predictions. Errors: 404 unknown id, 409 state conflict,
413 body too large, 422 invalid input (``detail[].loc`` names the field), 503 storage down.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the environment's (``DESCENT_*``)."""
    settings = settings or get_settings()
    app = FastAPI(title="Descent", version="0.1.0", description=DESCRIPTION, lifespan=_lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, extra_paths=(metrics.PATH,))  # added last: the outermost layer sees every answer
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(datasets.router, prefix="/v1")
    app.include_router(sweeps.router, prefix="/v1")
    app.include_router(plots.router, prefix="/v1")
    app.include_router(page.router)
    return app


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    process_exited()


app = create_app()
