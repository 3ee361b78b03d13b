"""create_app(settings): wires the registry, arbiter, metrics and routers onto app.state."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from server import discovery, errors, gateway
from server.access import AccessMiddleware
from server.arbiter import Arbiter
from server.audio import ScratchDir
from server.events import EventHub, Fanout
from server.image_input import ImagePolicy
from server.imagestore import ImageStore
from server.memory import MemoryProbe, default_budget_mb, default_ram_budget_mb, detect_device
from server.metrics import Metrics
from server.registry import Registry, load_registry
from server.response_store import ResponseStore
from server.routes import (
    admin,
    audio,
    chat,
    completions,
    embeddings,
    events,
    health,
    images,
    messages,
    models,
    rerank,
    responses,
    tokenize,
    ui,
)
from server.security import SecurityMiddleware
from server.services import Services
from server.settings import Settings
from server.warm import WarmStore
from server.watchdog import Timeouts
from server.worker_client import WorkerFactory

log = logging.getLogger("modelyard")

VERSION = "0.1.0"
_V1_ALIASES = ("/chat/completions", "/completions", "/embeddings", "/models", "/images/generations",
               "/audio/transcriptions", "/audio/translations", "/audio/speech", "/rerank", "/tokenize",
               "/detokenize", "/responses", "/messages", "/messages/count_tokens")


class ConfigError(Exception):
    """The server refuses to start with these settings."""


def allowed_model_dirs(settings: Settings) -> list[Path]:
    """MODELYARD_MODEL_DIRS, or by default: the registry's directory, the demo cache and the stores
    `pull` downloads into and `models --discover` reads (Hugging Face cache, Ollama, LM Studio)."""
    if settings.model_dirs:
        return [Path(d).expanduser() for d in settings.model_dirs]
    return [settings.models.resolve().parent, settings.cache_dir.expanduser(), *discovery.store_roots()]


def check_exposure(settings: Settings) -> None:
    if not settings.binds_loopback and not settings.api_keys and not settings.insecure_no_auth:
        raise ConfigError(
            f"refusing to listen on {settings.host} without an API key: set MODELYARD_API_KEYS "
            "(or --api-keys), or pass --insecure-no-auth if every client on that network is trusted"
        )


def create_app(settings: Settings, *, factory=None, probe: MemoryProbe | None = None,
               registry: Registry | None = None) -> FastAPI:
    check_exposure(settings)
    registry = registry or load_registry(settings.models, allowed_model_dirs(settings))
    probe = probe or MemoryProbe()
    metrics = Metrics(VERSION)
    metrics.known_models([spec.id for spec in registry])
    metrics.queue_capacity.set(settings.max_queue)
    budget = settings.budget_mb or default_budget_mb(probe)
    ram_budget = default_ram_budget_mb(probe) if settings.ram_budget_mb is None else settings.ram_budget_mb
    device = detect_device(probe, settings.worker_overhead_mb)
    arbiter_kwargs = dict(
        device=device,
        max_queue=settings.max_queue,
        queue_timeout_s=settings.queue_timeout_s,
        load_timeout_s=settings.load_timeout_s,
        unload_timeout_s=settings.unload_timeout_s,
        max_wait_s=settings.max_wait_s,
        ram_budget_mb=ram_budget,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        warm = WarmStore(settings.park_dir) if ram_budget else None
        timeouts = Timeouts(heartbeat_s=settings.worker_heartbeat_timeout_s,
                            first_token_s=settings.first_token_timeout_s, inter_token_s=settings.inter_token_timeout_s)
        hub = EventHub()
        arbiter = Arbiter(budget, factory or WorkerFactory(timeouts=timeouts), probe, warm=warm,
                          events=Fanout(metrics, hub), **arbiter_kwargs)
        hub.bind(arbiter)
        images = ImageStore(ttl_s=settings.image_ttl_s, max_bytes=settings.image_store_mb * 1024 * 1024)
        responses = ResponseStore(settings.response_ttl_s, settings.response_store_max)
        app.state.services = services = Services(settings, registry, arbiter, metrics, probe, device, images,
                                                 ScratchDir(), responses, int(time.time()), hub,
                                                 image_policy=ImagePolicy.of(settings))
        specs = {spec.id: spec for spec in registry}
        metrics.watch_gateway(gateway.GatewayCollector(
            lambda: gateway.occupancy(arbiter.snapshot(), specs, lambda spec: arbiter.plan(spec)[0])))
        metrics.memory(0.0, budget, {})
        metrics.ram_budget.set(ram_budget * 1024 * 1024)
        for spec in registry:
            if spec.pinned:  # a pinned model is meant to be ready before the first request
                arbiter.preload(spec)
        log.info("modelyard %s: %d models, budget %d MiB (%s), workers on %s, warm tier %d MiB", VERSION,
                 len(registry), budget, "GPU" if probe.gpu else "RAM", device.kind, ram_budget)
        try:
            yield
        finally:
            hub.close()
            await arbiter.close()
            services.audio_scratch.close()

    app = FastAPI(title="modelyard", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None)
    errors.install(app)
    for router in (chat.router, completions.router, embeddings.router, models.router, health.router,
                   admin.router, images.router, audio.router, rerank.router, tokenize.router, responses.router,
                   messages.router, events.router, ui.router):
        app.include_router(router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(SecurityMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id", "x-modelyard-placement"])
    app.add_middleware(AccessMiddleware, metrics=metrics)
    app.add_middleware(V1Aliases)
    return app


class V1Aliases:
    """Answer /chat/completions and friends without the /v1 prefix too (cheap insurance)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path in _V1_ALIASES or path.startswith(("/models/", "/responses/"))):
            scope = {**scope, "path": "/v1" + path, "raw_path": b"/v1" + scope.get("raw_path", path.encode())}
        await self.app(scope, receive, send)
