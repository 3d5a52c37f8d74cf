"""Who is asking: ``Authorization: Bearer <key>`` names the tenant every read and write is scoped
to. With no keys configured, auth is off and everyone is the one tenant ``default`` (``descent
up`` then serves 127.0.0.1 only). ``/healthz`` and ``/readyz`` take no key; ``/metrics`` takes
the operators' metrics key, never a tenant's."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.db.models import DEFAULT_TENANT
from services.errors import Forbidden, Unauthorized
from services.keys import KeyRing

_bearer = HTTPBearer(auto_error=False, description="An API key (DESCENT_API_KEYS); not needed when auth is off")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def keys_of(request: Request) -> KeyRing:
    return request.app.state.keys


# The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hop per request for a hash and a comparison.

async def current_tenant(request: Request, credentials: Credentials) -> str:
    ring = keys_of(request)
    if not ring.enabled:
        return DEFAULT_TENANT
    if credentials is None:
        raise Unauthorized("this endpoint needs an API key: send `Authorization: Bearer <key>`")
    tenant = ring.tenant_of(credentials.credentials)
    if tenant is None:
        raise Unauthorized("the API key is not valid")
    return tenant


async def metrics_reader(request: Request, credentials: Credentials) -> None:
    """Operators only: the metrics name every tenant's sweeps."""
    ring = keys_of(request)
    if not ring.enabled:
        return
    if credentials is None:
        raise Unauthorized("/metrics needs the metrics key: send `Authorization: Bearer <DESCENT_METRICS_KEY>`")
    if ring.is_metrics_key(credentials.credentials):
        return
    if ring.tenant_of(credentials.credentials) is not None:
        raise Forbidden("/metrics is for operators: a tenant's key cannot read it")
    raise Unauthorized("the API key is not valid")


Tenant = Annotated[str, Depends(current_tenant)]
MetricsReader = Depends(metrics_reader)
