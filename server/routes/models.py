"""GET /v1/models and /v1/models/{id} (ids may contain '/')."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.errors import ModelNotFound
from server.protocol.models import entry
from server.services import services_of

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    svc = services_of(request)
    return {
        "object": "list",
        "data": [entry(spec, svc.started_at, svc.arbiter.is_resident(spec.id),
                       svc.arbiter.plan(spec)[0].context_length)
                 for spec in svc.registry],
    }


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str):
    svc = services_of(request)
    spec = svc.registry.resolve(model_id)
    if spec is None:
        raise ModelNotFound(f"The model '{model_id[:100]}' does not exist.", param="model")
    return entry(spec, svc.started_at, svc.arbiter.is_resident(spec.id), svc.arbiter.plan(spec)[0].context_length,
                 name=model_id)
