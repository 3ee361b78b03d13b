"""/health (liveness: the process answers) and /health/ready (it can take requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.services import services_of

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(request: Request):
    arbiter = services_of(request).arbiter
    body = {
        "status": "shutting_down" if arbiter.closing else "ready",
        "models": len(services_of(request).registry),
        "loading": arbiter.loading(),
        "waiting": arbiter.waiting,
    }
    return JSONResponse(body, status_code=503 if arbiter.closing else 200)
