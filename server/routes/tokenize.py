"""POST /v1/tokenize and /v1/detokenize (and without /v1): the model's own tokenizer, loaded model and all."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Request

from backends.capability import Capability
from backends.contract import DetokenizeParams, DetokenizeResult, Params, TokenizeParams, TokenizeResult
from server.generation import Generation, model_for, until_disconnected
from server.json_response import JSONResponse
from server.protocol import tokenize as wire
from server.services import services_of

router = APIRouter()
TEXT_MODELS = frozenset({Capability.CHAT, Capability.COMPLETION, Capability.EMBEDDING, Capability.RERANK})


async def _call(request: Request, name: str, params: Params, capability=TEXT_MODELS):
    spec = model_for(request, name, capability)
    generation = await Generation.open(request, spec, None, [params])
    try:
        [(_, raw)] = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    return spec, raw


@router.post("/v1/tokenize")
async def tokenize(request: Request, body: wire.TokenizeRequest):
    messages = [m.model_dump(exclude_none=True) for m in body.messages] if body.messages else None
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools and messages else None
    params = TokenizeParams(text=body.prompt, messages=messages, tools=tools, add_special_tokens=body.add_special_tokens)
    spec, raw = await _call(request, body.model, params,
                            Capability.CHAT if messages is not None else TEXT_MODELS)
    result = cast(TokenizeResult, raw)
    context = services_of(request).arbiter.plan(spec)[0].context_length
    return JSONResponse(wire.tokenized(result["tokens"], result["pieces"], context, body.return_token_strs))


@router.post("/v1/detokenize")
async def detokenize(request: Request, body: wire.DetokenizeRequest):
    _, raw = await _call(request, body.model, DetokenizeParams(tokens=list(body.tokens)))
    return JSONResponse({"prompt": cast(DetokenizeResult, raw)["text"]})
