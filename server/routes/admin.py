"""Admin API: what is resident (memory, pid, refcount, expiry) and unloading a model."""

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


@router.post("/unload")
async def unload(request: Request, body: UnloadRequest):
    svc = services_of(request)
    spec = svc.registry.resolve(body.model)
    if spec is None:
        raise ModelNotFound(f"The model '{body.model[:100]}' does not exist.", param="model")
    if not await svc.arbiter.unload(spec.id):
        raise NotFound(f"model {spec.id} is not loaded", param="model")
    return {"model": spec.id, "unloaded": True}
