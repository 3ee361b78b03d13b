"""POST /v1/rerank (and /v2/rerank, Cohere's path; /rerank through the /v1 aliases)."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Request

from backends.capability import Capability
from backends.contract import RerankParams, RerankResult
from server.generation import Generation, model_for, until_disconnected
from server.json_response import JSONResponse
from server.protocol import rerank as wire
from server.protocol.common import new_id
from server.services import services_of

router = APIRouter()


@router.post("/v1/rerank")
@router.post("/v2/rerank")
async def create_rerank(request: Request, body: wire.RerankRequest):
    spec = model_for(request, body.model, Capability.RERANK)
    texts = body.texts()
    generation = await Generation.open(request, spec, body.keep_alive, [RerankParams(query=body.query,
                                                                                      documents=texts)])
    try:
        [(_, raw)] = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    result = cast(RerankResult, raw)
    prompt_tokens = result["usage"]["prompt_tokens"]
    generation.usage = (prompt_tokens, 0)
    services_of(request).metrics.observe_generation(spec.id, generation)
    return JSONResponse(wire.response(new_id("rerank"), body.model, texts, result["scores"], body.top_n,
                                      body.return_documents, prompt_tokens))
