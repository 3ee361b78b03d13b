"""GET /v1/models and /v1/models/{id} (ids may contain '/')."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.errors import ModelNotFound
from server.protocol.models import entry
from server.services import Services, services_of

router = APIRouter()


def _entry(svc: Services, spec, name: str | None = None, adapter: str | None = None) -> dict:
    rung = svc.arbiter.rung(spec)
    return entry(spec, svc.started_at, svc.arbiter.status(spec.id), rung.plan, svc.arbiter.estimate_mb(spec),
                 rung.placement, name=name, adapter=adapter)


@router.get("/v1/models")
async def list_models(request: Request):
    """Every model, each followed by its LoRA adapters (`<model>:<adapter>`, with `base`)."""
    svc = services_of(request)
    data = []
    for spec in svc.registry:
        data.append(_entry(svc, spec))
        data.extend(_entry(svc, spec, adapter=a.name) for a in spec.adapters)
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str):
    svc = services_of(request)
    spec = svc.registry.resolve(model_id)
    if spec is None:
        raise ModelNotFound(f"The model '{model_id[:100]}' does not exist.", param="model")
    return _entry(svc, spec, name=model_id, adapter=svc.registry.adapter(model_id))
