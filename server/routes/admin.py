"""Admin API: what is resident or parked (memory, pid, refcount, expiry, placement), the dry-run
plan for a model, the registry as the page's playground needs it, and unloading, preloading and
pinning a model."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field, field_validator

from backends.diffusion.spec import DiffusionSpec
from backends.spec import BaseSpec, parse_keep_alive
from server.errors import InvalidRequest, ModelNotFound, NotFound
from server.generation import until_disconnected
from server.protocol.common import RequestBody, WireModel
from server.services import Services, services_of

router = APIRouter(prefix="/admin")


class UnloadRequest(RequestBody):
    model: str


class PreloadRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    keep_alive: float | int | str | None = Field(None, description="Ollama-style: seconds or '5m'.")

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: Any) -> Any:
        return None if value is None else parse_keep_alive(value)


class PinRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    pinned: bool = True


def _spec(svc: Services, name: str) -> BaseSpec:
    spec = svc.registry.resolve(name)
    if spec is None:
        raise ModelNotFound(f"The model '{name[:100]}' does not exist.", param="model")
    return spec


def _keep_alive_s(seconds: float) -> float:
    return -1 if math.isinf(seconds) else seconds  # models.yaml's spelling of forever


def playground(spec: BaseSpec) -> dict[str, Any]:
    """What a form for this model should offer: its voices, its image sizes and steps."""
    hints: dict[str, Any] = {}
    voices = getattr(spec, "voices", None)
    if callable(voices):
        hints["voices"] = sorted(voices())
    if isinstance(spec, DiffusionSpec):
        o = spec.options
        hints["image"] = {"default_size": o.default_size, "sizes": list(o.sizes), "min_side": o.min_side,
                          "max_side": o.max_side, "default_steps": o.default_steps, "max_steps": o.max_steps}
    return hints


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
    return svc.arbiter.dry_run(_spec(svc, model))


@router.get("/models")
async def registry(request: Request):
    """Every model with what the page shows and asks of it (capabilities, keep-alive, pins, hints)."""
    svc = services_of(request)
    return {"models": [
        {"id": spec.id, "backend": spec.backend, "aliases": list(spec.aliases), "description": spec.description,
         "capabilities": sorted(c.value for c in spec.capabilities), "keep_alive_s": _keep_alive_s(spec.keep_alive),
         "pinned": svc.arbiter.pinned(spec), "pinned_in_config": spec.pinned, "status": svc.arbiter.status(spec.id),
         "playground": playground(spec)}
        for spec in svc.registry
    ]}


@router.post("/preload")
async def preload(request: Request, body: PreloadRequest):
    """Load a model now (evicting or parking others as a request would) and answer once it is ready."""
    svc = services_of(request)
    spec = _spec(svc, body.model)
    started = time.perf_counter()
    lease = await until_disconnected(request, svc.arbiter.acquire(spec, body.keep_alive))
    lease.release()
    return {"model": spec.id, "status": svc.arbiter.status(spec.id), "placement": lease.placement,
            "seconds": round(time.perf_counter() - started, 3)}


@router.post("/pin")
async def pin(request: Request, body: PinRequest):
    """Pin a model (loaded now if absent; never evicted; no keep-alive expiry) or unpin it, until the
    server stops. A models.yaml pin cannot be lifted here."""
    svc = services_of(request)
    spec = _spec(svc, body.model)
    try:
        svc.arbiter.pin(spec, body.pinned)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="pinned") from None
    return {"model": spec.id, "pinned": svc.arbiter.pinned(spec), "status": svc.arbiter.status(spec.id)}


@router.post("/unload")
async def unload(request: Request, body: UnloadRequest):
    svc = services_of(request)
    spec = _spec(svc, body.model)
    if not await svc.arbiter.unload(spec.id):
        raise NotFound(f"model {spec.id} is neither loaded nor parked", param="model")
    return {"model": spec.id, "unloaded": True}
