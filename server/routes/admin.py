"""Admin API: what is resident or parked (memory, pid, refcount, expiry, placement), the dry-run
plan for a model, and unloading a model."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request

from server.errors import ModelNotFound, NotFound
from server.protocol.common import RequestBody
from server.services import services_of

router = APIRouter(prefix="/admin")


class UnloadRequest(RequestBody):
    model: str


@router.get("/ps")
async def residents(request: Request, stats: bool = False):
    arbiter = services_of(request).arbiter
    snapshot = arbiter.snapshot()
    if stats:  # ask each worker for its own counters (tokens generated, active requests)
        for entry in snapshot["residents"]:
            worker = arbiter.worker_of(entry["model"])
            if worker is not None:
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    entry["worker"] = await worker.stats()
    return snapshot


@router.get("/plan")
async def plan(request: Request, model: str | None = None):
    """What a request for `model` would lead to now (every model's, without `model`): its estimate
    by part, the fit-ladder rung, whether it fits, what would be evicted, parked, dropped or
    drained, and the expected wait. The arbiter decides with the same functions; nothing changes."""
    svc = services_of(request)
    if model is None:
        return {"models": [svc.arbiter.dry_run(spec) for spec in svc.registry]}
    spec = svc.registry.resolve(model)
    if spec is None:
        raise ModelNotFound(f"The model '{model[:100]}' does not exist.", param="model")
    return svc.arbiter.dry_run(spec)


@router.post("/unload")
async def unload(request: Request, body: UnloadRequest):
    svc = services_of(request)
    spec = svc.registry.resolve(body.model)
    if spec is None:
        raise ModelNotFound(f"The model '{body.model[:100]}' does not exist.", param="model")
    if not await svc.arbiter.unload(spec.id):
        raise NotFound(f"model {spec.id} is neither loaded nor parked", param="model")
    return {"model": spec.id, "unloaded": True}
