"""Dataset endpoints: upload once (JSON or CSV), then refer to it by ``dataset_id`` in jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from api import idempotency
from api.auth import Tenant
from api.deps import DatasetBody
from api.idempotency import IdempotencyKey
from services import datasets
from services.spec import ID_PATTERN, DatasetCreate, DatasetRead

router = APIRouter(prefix="/datasets", tags=["datasets"])

# The body is parsed by a dependency (three content types), so OpenAPI is told about it here.
_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DatasetCreate.model_json_schema()},
            "text/csv": {"schema": {"type": "string", "example": "x,y\n0,0\n0.5,1\n1,0\n"}},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "additionalProperties": False,
                           "properties": {"file": {"type": "string", "format": "binary"}}},
            },
        },
    }
}


@router.post("", status_code=201, response_model=DatasetRead, openapi_extra=_BODY_DOC,
             responses=idempotency.responses(DatasetRead))
def create_dataset(tenant: Tenant, body: DatasetBody, idempotency_key: IdempotencyKey = None) -> Response:
    """Store x/y once per content; the same data posted again returns the same dataset.

    CSV: a header row; columns ``x``/``x1``, ``x2``... are inputs, ``y``/``y1``... outputs.
    """
    return idempotency.answer(datasets.create_dataset_once(body.x, body.y, idempotency_key, tenant=tenant), "/v1/datasets/{id}")


@router.get("/{dataset_id}", response_model=DatasetRead, responses={404: {"description": "No such dataset"}})
def read_dataset(dataset_id: Annotated[str, Path(pattern=ID_PATTERN)], tenant: Tenant) -> DatasetRead:
    return datasets.get_dataset(dataset_id, tenant=tenant)
