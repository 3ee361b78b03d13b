"""/health (liveness: the process answers) and /health/ready (it can take requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.routes.common import services

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(request: Request):
    arbiter = services(request).arbiter
    body = {
        "status": "shutting_down" if arbiter.closing else "ready",
        "models": len(services(request).registry),
        "loading": arbiter.loading(),
        "waiting": arbiter.waiting,
    }
    return JSONResponse(body, status_code=503 if arbiter.closing else 200)
