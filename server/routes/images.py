"""POST /v1/images/generations, and GET /v1/images/files/{id}.png for `response_format: url`."""

from __future__ import annotations

import base64
import time
from typing import cast

from fastapi import APIRouter, Request
from starlette.responses import Response

from backends.capability import Capability
from backends.contract import ImageParams, ImageResult
from backends.diffusion.spec import DiffusionOptions, DiffusionSpec, parse_size
from server.errors import InvalidRequest, NotFound
from server.generation import Generation, model_for, until_disconnected
from server.protocol import images as wire
from server.protocol.common import now
from server.services import services_of

router = APIRouter()
FILES_PREFIX = "/v1/images/files/"


def engine_params(body: wire.ImageGenerationRequest, options: DiffusionOptions) -> tuple[ImageParams, str]:
    """Every bound checked against the model's options: a 400 before any model is touched."""
    size = body.size or options.default_size
    try:
        width, height = parse_size(size)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="size") from None
    problem = options.size_error(width, height)
    if problem:
        raise InvalidRequest(problem, param="size")
    if body.n > options.max_n:
        raise InvalidRequest(f"n must be at most {options.max_n} for this model", param="n")
    if body.steps is not None and body.steps > options.max_steps:
        raise InvalidRequest(f"steps must be at most {options.max_steps} for this model", param="steps")
    if body.guidance_scale is not None and body.guidance_scale > options.max_guidance:
        raise InvalidRequest(f"guidance_scale must be at most {options.max_guidance:g}", param="guidance_scale")
    params = ImageParams(prompt=body.prompt, negative_prompt=body.negative_prompt, n=body.n, width=width,
                         height=height, steps=body.steps, guidance_scale=body.guidance_scale, seed=body.seed)
    return params, f"{width}x{height}"


@router.post("/v1/images/generations")
async def create_images(request: Request, body: wire.ImageGenerationRequest):
    spec = cast(DiffusionSpec, model_for(request, body.model, Capability.IMAGE))
    params, size = engine_params(body, spec.options)
    started = time.perf_counter()
    generation = await Generation.open(request, spec, None, [params])
    try:
        # A client that leaves mid-diffusion cancels the call; the worker stops between steps.
        [(_, raw)] = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    pngs = cast(ImageResult, raw)["images"]
    svc = services_of(request)
    svc.metrics.observe_images(spec.id, len(pngs), time.perf_counter() - started)
    if body.response_format == "b64_json":
        data = [{"b64_json": png} for png in pngs]
    else:
        store = svc.images
        base = public_base_url(request)
        data = [{"url": f"{base}{FILES_PREFIX}{store.put(base64.b64decode(png))[0]}.png"} for png in pngs]
    return wire.response(now(), data, size)


def public_base_url(request: Request) -> str:
    """Where clients reach this server: the configured public URL, else the address the request
    arrived on (the socket's, never the client's Host header: a forged Host must not put another
    site's name in the links we hand out)."""
    configured = services_of(request).settings.public_base_url
    if configured:
        return configured.rstrip("/")
    server = request.scope.get("server")
    if not server or server[1] is None:  # a Unix socket: only a proxy in front knows the public name
        return str(request.base_url).rstrip("/")
    host, port = server
    host = f"[{host}]" if ":" in host else host
    return f"{request.url.scheme}://{host}:{port}"


@router.get(FILES_PREFIX + "{name}")
async def image_file(request: Request, name: str):
    image_id, dot, ext = name.rpartition(".")
    png = services_of(request).images.get(image_id) if dot and ext == "png" else None
    if png is None:
        raise NotFound("this image does not exist or has expired")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
