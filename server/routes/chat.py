"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from backends.capability import Capability
from server.protocol import chat as wire
from server.protocol.common import new_id, now, usage
from server.routes.common import Generation, resolve, services, sse, sse_response, until_disconnected

router = APIRouter()


def engine_params(body: wire.ChatCompletionRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "messages": [m.model_dump(exclude_none=True) for m in body.messages],
        "max_tokens": body.token_limit(),
        "stop": body.stop_list(),
    }
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            params[name] = value
    return params


def per_choice(params: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """n choices are n calls; with a seed, each gets its own so they differ yet stay reproducible."""
    if n == 1 or params.get("seed") is None:
        return [params] * n
    return [{**params, "seed": params["seed"] + i} for i in range(n)]


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request, body: wire.ChatCompletionRequest):
    spec = resolve(request, body.model, Capability.CHAT)
    params = per_choice(engine_params(body), body.n)
    generation = await Generation.open(request, spec, body.keep_alive, "chat", params)
    cid, created = new_id("chatcmpl"), now()
    if body.stream:
        return sse_response(request, generation, _stream(body, generation, cid, created))
    try:
        results = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, (chunks, final) in enumerate(results):
        text = "".join(c.get("text", "") for c in chunks)
        choices.append(wire.choice(index, text, final.get("finish_reason", "stop")))
        prompt_tokens = final.get("usage", {}).get("prompt_tokens", 0)
        completion_tokens += final.get("usage", {}).get("completion_tokens", 0)
    generation.usage = (prompt_tokens, completion_tokens)
    services(request).metrics.observe_generation(request, generation)
    return wire.completion(cid, created, body.model, choices, usage(prompt_tokens, completion_tokens))


async def _stream(body: wire.ChatCompletionRequest, generation: Generation, cid: str,
                  created: int) -> AsyncIterator[bytes]:
    with_usage = body.include_usage()
    model = body.model
    for index in range(body.n):
        yield sse(wire.chunk(cid, created, model, [wire.delta(index, role="assistant", content="")], with_usage))
    async for index, piece in generation.events():
        if piece.get("text"):
            yield sse(wire.chunk(cid, created, model, [wire.delta(index, content=piece["text"])], with_usage))
    prompt_tokens = completion_tokens = 0
    for index, call in enumerate(generation.calls):
        final = call.final or {}
        reason = final.get("finish_reason", "stop")
        yield sse(wire.chunk(cid, created, model, [wire.delta(index, finish_reason=reason)], with_usage))
        prompt_tokens = final.get("usage", {}).get("prompt_tokens", 0)
        completion_tokens += final.get("usage", {}).get("completion_tokens", 0)
    generation.usage = (prompt_tokens, completion_tokens)
    if with_usage:
        last = wire.chunk(cid, created, model, [], False)
        last["usage"] = usage(prompt_tokens, completion_tokens)
        yield sse(last)
