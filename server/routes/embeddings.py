"""POST /v1/embeddings"""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Request

from backends.capability import Capability
from backends.contract import EmbeddingParams, EmbeddingResult
from server.generation import Generation, model_for
from server.json_response import JSONResponse
from server.protocol import embeddings as wire
from server.services import services_of

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(request: Request, body: wire.EmbeddingRequest):
    spec = model_for(request, body.model, Capability.EMBEDDING)
    params = EmbeddingParams(inputs=body.inputs(), token_inputs=body.token_inputs())
    generation = await Generation.open(request, spec, body.keep_alive, [params])
    try:
        [(_, raw)] = await generation.collect()
    finally:
        generation.close()
    result = cast(EmbeddingResult, raw)
    prompt_tokens = result["usage"]["prompt_tokens"]
    generation.usage = (prompt_tokens, 0)
    services_of(request).metrics.observe_generation(spec.id, generation)
    # Plain JSON data already: skip FastAPI's jsonable_encoder pass on the hot path.
    return JSONResponse(wire.response(body.model, result["embeddings"], body.encoding_format, prompt_tokens))
