"""POST /v1/embeddings"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backends.capability import Capability
from server.protocol import embeddings as wire
from server.routes.common import Generation, resolve, services

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, body: wire.EmbeddingRequest):
    spec = resolve(request, body.model, Capability.EMBEDDING)
    generation = await Generation.open(request, spec, body.keep_alive, "embed", [{"inputs": body.inputs()}])
    try:
        [(_, final)] = await generation.collect()
    finally:
        generation.close()
    prompt_tokens = final.get("usage", {}).get("prompt_tokens", 0)
    generation.usage = (prompt_tokens, 0)
    services(request).metrics.observe_generation(request, generation)
    # Plain JSON data already: skip FastAPI's jsonable_encoder pass on the hot path.
    return JSONResponse(wire.response(body.model, final.get("embeddings", []), body.encoding_format, prompt_tokens))
