"""Liveness and readiness probes.

``/healthz`` says the process answers; ``/readyz`` says it can do work: the database answers
``SELECT 1`` with its schema not behind this code's migrations, and the broker accepts a
connection (for the embedded ``filesystem://`` broker, its folder exists). Orchestrators (and
``descent up``) wait on ``/readyz``; under ``descent up`` its answer also echoes the stack's
token (``"stack"``, from ``DESCENT_STACK_TOKEN``), so the supervisor knows its own API from
another server on the same port.
"""

from __future__ import annotations

import logging
import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import text

from api.deps import SettingsDep
from api.errors import RETRY_AFTER_S, problem
from services.config import Settings
from services.db.migrate import schema_problem
from services.db.session import session_scope
from services.stack import TOKEN_ENV

router = APIRouter(tags=["health"])
log = logging.getLogger("descent.api")
BROKER_TIMEOUT_S = 2.0


@router.get("/healthz")
async def read_health() -> dict[str, str]:
    """On the event loop, not in the thread pool: a liveness probe must not queue behind slow
    requests holding every pool thread (and it skips a thread hop per probe)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable"}})
def read_readiness(request: Request, settings: SettingsDep) -> JSONResponse:
    """200 when every dependency answers, else 503 (problem details) naming the ones that do not."""
    checks = {"database": _database_error(), "broker": _broker_error(settings)}
    failing = {name: err for name, err in checks.items() if err}
    if failing:
        return problem(503, "not ready: " + "; ".join(failing.values()), instance=request.url.path,
                       headers={"Retry-After": str(RETRY_AFTER_S)}, extensions={"failing": failing})
    ready: dict[str, object] = {"status": "ready", "checks": {name: "ok" for name in checks}}
    if token := os.environ.get(TOKEN_ENV):
        ready["stack"] = token
    return JSONResponse(content=ready)


def _database_error() -> str | None:
    """The database answers, and its schema is not behind this code's migrations."""
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
            problem = schema_problem(session.connection())
    except Exception as exc:  # noqa: BLE001 (any failure means "not ready")
        log.warning("readiness: database: %s", exc)
        return f"database unreachable: {type(exc).__name__}"
    if problem:
        log.warning("readiness: %s", problem)
    return problem


def _broker_error(settings: Settings) -> str | None:
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        return None if folder.is_dir() else f"broker folder {folder} does not exist"
    try:
        with Connection(settings.broker_url, connect_timeout=BROKER_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=BROKER_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001
        log.warning("readiness: broker: %s", exc)
        return f"broker unreachable: {type(exc).__name__}"
    return None
