"""POST /v1/chat/completions"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backends import schema_limits
from backends.capability import Capability
from backends.contract import ChatParams, TextChunk, TextResult
from server.errors import InvalidRequest, UnsupportedCapability
from server.generation import Generation, model_for, sse, sse_response, until_disconnected
from server.protocol import chat as wire
from server.protocol import logprobs as lp
from server.protocol import tools
from server.protocol.common import new_id, now, usage
from server.services import services_of

router = APIRouter()


def engine_params(body: wire.ChatCompletionRequest, plan: tools.ToolPlan) -> ChatParams:
    params = ChatParams(messages=[m.model_dump(exclude_none=True) for m in body.messages],
                        max_tokens=body.token_limit(), **body.sampling())
    if body.logprobs:
        params.logprobs = True
        params.top_logprobs = body.top_logprobs or 0
    if body.response_format is not None:
        params.response_format = body.response_format.normalised()
    if plan.schema is not None:
        params.response_format = {"type": "json_schema", "schema": plan.schema}
        params.tools = body.tool_dicts()
    return params


def tool_plan(body: wire.ChatCompletionRequest) -> tools.ToolPlan:
    try:
        return tools.plan(body.tool_dicts(), body.tool_choice_value())
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="tool_choice") from None


def per_choice(params: ChatParams, n: int) -> list[ChatParams]:
    """n choices are n calls; with a seed, each gets its own so they differ yet stay reproducible."""
    if n == 1 or params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=params.seed + i) for i in range(n)]


def check_request(body: wire.ChatCompletionRequest, spec) -> None:
    """What no engine could serve, refused before a model is touched: content parts a text model
    cannot read, schemas past what constrained decoding allows (backends/schema_limits.py)."""
    for i, message in enumerate(body.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise UnsupportedCapability(f"model {spec.id} reads text only; messages[{i}].content[{j}] is a "
                                            f"{kind!r} part", param=f"messages.{i}.content.{j}")
    schemas = [(t.function.parameters, f"tools.{i}.function.parameters") for i, t in enumerate(body.tools or [])]
    if body.response_format is not None and body.response_format.json_schema is not None:
        schemas.append((body.response_format.json_schema.schema_, "response_format.json_schema.schema"))
    for schema, path in schemas:
        try:
            schema_limits.check(schema or {}, path)
        except schema_limits.SchemaTooComplex as exc:
            raise InvalidRequest(str(exc), param=exc.path) from None


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request, body: wire.ChatCompletionRequest):
    spec = model_for(request, body.model, Capability.CHAT)
    check_request(body, spec)
    plan = tool_plan(body)
    generation = await Generation.open(request, spec, body.keep_alive, per_choice(engine_params(body, plan), body.n))
    cid, created = new_id("chatcmpl"), now()
    if body.stream:
        return sse_response(request, generation, _stream(body, plan, generation, cid, created))
    try:
        results = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, (chunks, raw) in enumerate(results):
        pieces, final = cast(list[TextChunk], chunks), cast(TextResult, raw)
        text = "".join(c["text"] for c in pieces)
        reason = final["finish_reason"]
        logprobs = _logprobs(body, pieces)
        if plan.schema is not None:
            outcome = tools.interpret(text, plan, reason)
            extra = {"tool_calls": outcome.tool_calls} if outcome.tool_calls else {}
            choices.append(wire.choice(index, outcome.content, outcome.finish_reason, logprobs, **extra))
        else:
            choices.append(wire.choice(index, text, reason, logprobs))
        prompt_tokens = final["usage"]["prompt_tokens"]
        completion_tokens += final["usage"]["completion_tokens"]
    generation.usage = (prompt_tokens, completion_tokens)
    services_of(request).metrics.observe_generation(spec.id, generation)
    # Plain JSON data already: skip FastAPI's jsonable_encoder pass on the hot path.
    return JSONResponse(wire.completion(cid, created, body.model, choices, usage(prompt_tokens, completion_tokens)))


def _logprobs(body: wire.ChatCompletionRequest, chunks: list[TextChunk]) -> dict[str, Any] | None:
    if not body.logprobs:
        return None
    entries = [e for c in chunks for e in c.get("logprobs", [])]
    return {"content": lp.chat_content(entries), "refusal": None}


async def _stream(body: wire.ChatCompletionRequest, plan: tools.ToolPlan, generation: Generation, cid: str,
                  created: int) -> AsyncIterator[bytes]:
    with_usage = body.include_usage()
    model = body.model
    held: dict[int, list[TextChunk]] = {i: [] for i in range(body.n)}  # tool output is parsed whole

    def event(*choices: dict[str, Any]) -> bytes:
        return sse(wire.chunk(cid, created, model, list(choices), with_usage))

    for index in range(body.n):
        yield event(wire.delta(index, role="assistant", content=""))
    async for index, raw in generation.events():
        piece = cast(TextChunk, raw)
        if plan.schema is not None:
            held[index].append(piece)
        elif piece["text"] or piece.get("logprobs"):
            yield event(wire.delta(index, content=piece["text"], logprobs=_logprobs(body, [piece])))
    if generation.abandoned:
        return
    prompt_tokens = completion_tokens = 0
    for index, raw_final in enumerate(generation.finals()):
        final = cast(TextResult, raw_final)
        reason = final["finish_reason"]
        if plan.schema is not None:
            text = "".join(c["text"] for c in held[index])
            outcome = tools.interpret(text, plan, reason)
            reason = outcome.finish_reason
            logprobs = _logprobs(body, held[index])
            if outcome.tool_calls:
                for fragment in tools.stream_deltas(outcome.tool_calls):
                    yield event(wire.delta(index, logprobs=logprobs, **fragment))
                    logprobs = None
            elif outcome.content:
                yield event(wire.delta(index, content=outcome.content, logprobs=logprobs))
        yield event(wire.delta(index, finish_reason=reason))
        prompt_tokens = final["usage"]["prompt_tokens"]
        completion_tokens += final["usage"]["completion_tokens"]
    generation.usage = (prompt_tokens, completion_tokens)
    if with_usage:
        last = wire.chunk(cid, created, model, [], False)
        last["usage"] = usage(prompt_tokens, completion_tokens)
        yield sse(last)
