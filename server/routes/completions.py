"""POST /v1/completions: one call per prompt and choice, answered in index order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backends.capability import Capability
from server.protocol import completions as wire
from server.protocol import logprobs as lp
from server.protocol.common import new_id, now, usage
from server.routes.common import Generation, resolve, services, sse, sse_response, until_disconnected

router = APIRouter()


def engine_params(body: wire.CompletionRequest) -> list[dict[str, Any]]:
    """Choice i*n + j is prompt i's j-th sample (the spec's order for a list of prompts)."""
    base: dict[str, Any] = {"max_tokens": body.max_tokens, "echo": body.echo, **body.sampling()}
    if body.suffix is not None:
        base["suffix"] = body.suffix
    if body.logprobs is not None:
        base["logprobs"] = body.logprobs
    calls = []
    for prompt in body.prompts():
        for j in range(body.n):
            params = {**base, "prompt": prompt}
            if params.get("seed") is not None:
                params["seed"] += j
            calls.append(params)
    return calls


def _usage(body: wire.CompletionRequest, finals: list[dict[str, Any]]) -> tuple[int, int]:
    prompt = sum(f.get("usage", {}).get("prompt_tokens", 0) for f in finals[:: body.n])
    completion = sum(f.get("usage", {}).get("completion_tokens", 0) for f in finals)
    return prompt, completion


def _logprobs(body: wire.CompletionRequest, chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    if body.logprobs is None:
        return None
    return lp.legacy([e for c in chunks for e in c.get("logprobs", [])])


@router.post("/v1/completions")
async def create_completion(request: Request, body: wire.CompletionRequest):
    spec = resolve(request, body.model, Capability.COMPLETION)
    generation = await Generation.open(request, spec, body.keep_alive, "complete", engine_params(body))
    cid, created = new_id("cmpl"), now()
    if body.stream:
        return sse_response(request, generation, _stream(body, generation, cid, created))
    try:
        results = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    choices = [wire.choice(i, "".join(c.get("text", "") for c in chunks), final.get("finish_reason", "stop"),
                           _logprobs(body, chunks))
               for i, (chunks, final) in enumerate(results)]
    generation.usage = _usage(body, [final for _, final in results])
    services(request).metrics.observe_generation(request, generation)
    # Plain JSON data already: skip FastAPI's jsonable_encoder pass on the hot path.
    return JSONResponse(wire.body(cid, created, body.model, choices, usage(*generation.usage)))


async def _stream(body: wire.CompletionRequest, generation: Generation, cid: str, created: int) -> AsyncIterator[bytes]:
    with_usage = body.include_usage()

    def event(choices: list[dict[str, Any]]) -> bytes:
        out = wire.body(cid, created, body.model, choices, None)
        if with_usage:
            out["usage"] = None  # every chunk but the last carries a null usage
        return sse(out)

    async for index, piece in generation.events():
        if piece.get("text") or piece.get("logprobs"):
            yield event([wire.choice(index, piece.get("text", ""), None, _logprobs(body, [piece]))])
    for index, call in enumerate(generation.calls):
        yield event([wire.choice(index, "", (call.final or {}).get("finish_reason", "stop"), None)])
    generation.usage = _usage(body, [call.final or {} for call in generation.calls])
    if with_usage:
        yield sse(wire.body(cid, created, body.model, [], usage(*generation.usage)))
