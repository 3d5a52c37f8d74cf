"""Who is asking: ``Authorization: Bearer <key>`` names the tenant every read and write is scoped
to. With no keys configured, auth is off and everyone is the one tenant ``default`` (``descent
up`` then serves 127.0.0.1 only). ``/healthz`` and ``/readyz`` take no key; ``/metrics`` takes
the operators' metrics key, never a tenant's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.db.models import DEFAULT_TENANT
from services.errors import Forbidden, Unauthorized
from services.keys import KeyRing

_bearer = HTTPBearer(auto_error=False, description="An API key (DESCENT_API_KEYS); not needed when auth is off")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def keys_of(request: Request) -> KeyRing:
    return request.app.state.keys


# The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread
# pool, a thread hop per request for a hash and a comparison.

async def current_tenant(request: Request) -> str:
    """The tenant of the request's key. It reads the header itself rather than through a
    ``Credentials`` sub-dependency: FastAPI's solving of each dependency cost a submit ~8 µs of
    its ~130 µs in the API's handler (benchmarks/RESULTS.md, eighth session), so the OpenAPI
    document gets the bearer scheme from ``document_security`` instead."""
    ring = keys_of(request)
    if not ring.enabled:
        return DEFAULT_TENANT
    credentials = await _bearer(request)
    if credentials is None:
        raise Unauthorized("this endpoint needs an API key: send `Authorization: Bearer <key>`")
    tenant = ring.tenant_of(credentials.credentials)
    if tenant is None:
        raise Unauthorized("the API key is not valid")
    return tenant


async def refused_key(request: Request) -> Unauthorized | None:
    """What ``current_tenant`` would refuse this request with, if its route takes a tenant.

    FastAPI parses a JSON body before it runs any dependency, so a request with no key (or an
    unknown one) and a malformed body fails validation before ``current_tenant`` can refuse it;
    the validation error handlers ask this first, so a missing key is a 401 whatever the body."""
    if not _takes_tenant(request.scope.get("route")):
        return None
    try:
        await current_tenant(request)
    except Unauthorized as exc:
        return exc
    return None


def _takes_tenant(route: object) -> bool:
    """Whether ``current_tenant`` is among the route's dependencies, at any depth."""
    dependant = getattr(route, "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        current = pending.pop()
        if current.call is current_tenant:
            return True
        pending.extend(current.dependencies)
    return False


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


def document_security(schema: dict[str, Any]) -> dict[str, Any]:
    """The bearer scheme on every ``/v1`` operation: each one takes a tenant's key (tested for
    every operation the document lists, tests/api/test_tenants.py); health checks take none."""
    guarded = False
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"], guarded = [{_bearer.scheme_name: []}], True
    if guarded:
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[_bearer.scheme_name] = _bearer.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return schema
