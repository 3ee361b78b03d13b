"""POST /v1/completions: one call per prompt and choice, answered in index order."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request

from backends.capability import Capability
from backends.contract import CompletionParams, TextChunk, TextResult
from server.generation import Generation, adapter_for, model_for, sse, sse_response, until_disconnected
from server.json_response import JSONResponse
from server.protocol import completions as wire
from server.protocol import logprobs as lp
from server.protocol.common import new_id, now, usage
from server.services import services_of

router = APIRouter()


def engine_params(body: wire.CompletionRequest, adapter: str | None = None) -> list[CompletionParams]:
    """Choice i*n + j is prompt i's j-th sample (the spec's order for a list of prompts)."""
    base = CompletionParams(max_tokens=body.max_tokens, echo=body.echo, suffix=body.suffix, logprobs=body.logprobs,
                            adapter=adapter, **body.sampling())
    calls = []
    for prompt in body.prompts():
        text, tokens = (prompt, None) if isinstance(prompt, str) else ("", prompt)
        for j in range(body.n):
            seed = None if base.seed is None else base.seed + j
            calls.append(dataclasses.replace(base, prompt=text, prompt_tokens=tokens, seed=seed))
    return calls


def _usage(body: wire.CompletionRequest, finals: list[TextResult]) -> tuple[int, int]:
    prompt = sum(f["usage"]["prompt_tokens"] for f in finals[:: body.n])
    completion = sum(f["usage"]["completion_tokens"] for f in finals)
    return prompt, completion


def _logprobs(body: wire.CompletionRequest, chunks: list[TextChunk]) -> dict[str, Any] | None:
    if body.logprobs is None:
        return None
    return lp.legacy([e for c in chunks for e in c.get("logprobs", [])])


@router.post("/v1/completions")
async def create_completion(request: Request, body: wire.CompletionRequest):
    spec = model_for(request, body.model, Capability.COMPLETION)
    generation = await Generation.open(request, spec, body.keep_alive,
                                       engine_params(body, adapter_for(request, body.model)), body.stream)
    cid, created = new_id("cmpl"), now()
    if body.stream:
        return sse_response(request, generation, _stream(body, generation, cid, created))
    try:
        results = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    texts = [(cast(list[TextChunk], chunks), cast(TextResult, final)) for chunks, final in results]
    choices = [wire.choice(i, "".join(c["text"] for c in chunks), final["finish_reason"], _logprobs(body, chunks))
               for i, (chunks, final) in enumerate(texts)]
    generation.usage = _usage(body, [final for _, final in texts])
    services_of(request).metrics.observe_generation(spec.id, generation)
    # Plain JSON data already: skip FastAPI's jsonable_encoder pass on the hot path.
    return JSONResponse(wire.body(cid, created, body.model, choices, usage(*generation.usage)))


async def _stream(body: wire.CompletionRequest, generation: Generation, cid: str, created: int) -> AsyncIterator[bytes]:
    with_usage = body.include_usage()

    def event(choices: list[dict[str, Any]]) -> bytes:
        out = wire.body(cid, created, body.model, choices, None)
        if with_usage:
            out["usage"] = None  # every chunk but the last carries a null usage
        return sse(out)

    async for index, raw in generation.events():
        piece = cast(TextChunk, raw)
        if piece["text"] or piece.get("logprobs"):
            yield event([wire.choice(index, piece["text"], None, _logprobs(body, [piece]))])
    if generation.abandoned:
        return
    finals = cast(list[TextResult], generation.finals())
    for index, final in enumerate(finals):
        yield event([wire.choice(index, "", final["finish_reason"], None)])
    generation.usage = _usage(body, finals)
    if with_usage:
        yield sse(wire.body(cid, created, body.model, [], usage(*generation.usage)))
