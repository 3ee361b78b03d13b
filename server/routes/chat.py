"""POST /v1/chat/completions"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from backends import schema_limits
from backends.capability import Capability
from backends.contract import TokenLogprob
from backends.tools import ToolFormat
from server.answer import Answer, Call, Delta, Finish, collect
from server.conversation import Conversation
from server.errors import InvalidRequest, UnsupportedCapability
from server.generation import Generation, adapter_for, model_for, sse, sse_response, until_disconnected
from server.image_input import ImageError, attach
from server.json_response import JSONResponse
from server.protocol import chat as wire
from server.protocol import logprobs as lp
from server.protocol import tools
from server.protocol.common import new_id, now, usage
from server.services import services_of
from server.tool_syntax import ToolCall

router = APIRouter()


def conversation(body: wire.ChatCompletionRequest) -> Conversation:
    return Conversation(
        messages=[m.model_dump(exclude_none=True) for m in body.messages], tools=body.tool_dicts(),
        tool_choice=body.tool_choice_value(), parallel_tool_calls=body.parallel_tool_calls,
        response_format=body.response_format.normalised() if body.response_format else None,
        max_tokens=body.token_limit(), sampling=body.sampling(), logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0, n=body.n)


def tool_plan(talk: Conversation) -> tools.ToolPlan:
    try:
        return talk.tool_plan()
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="tool_choice") from None


async def answer_to(request: Request, talk: Conversation, spec, keep_alive: float | None,
                    stream: bool = True, adapter: str | None = None) -> Answer:
    """The engine asked, its output read as an answer (shared by every chat front door); `adapter`:
    the LoRA adapter of `spec` the request named."""
    check_request(talk, spec)
    plan = tool_plan(talk)
    syntax = ToolFormat(services_of(request).arbiter.plan(spec)[0].tool_format or ToolFormat.JSON)
    talk = await with_images(request, dataclasses.replace(talk, adapter=adapter), spec)
    generation = await Generation.open(request, spec, keep_alive, talk.params(plan, syntax), stream)
    return Answer(generation, syntax if plan.schema is not None else None, talk.logprobs,
                  forced=plan.schema is not None and not plan.allow_message)


async def with_images(request: Request, talk: Conversation, spec) -> Conversation:
    """For a vision model, the conversation with its images fetched, checked and decoded
    (server/image_input.py): image parts become ImageParts pointing into `images`."""
    if Capability.VISION not in spec.capabilities:
        return talk
    services = services_of(request)
    plan = services.arbiter.plan(spec)[0]
    try:
        messages, images = await attach(talk.messages, services.image_policy, max_images=plan.max_images,
                                        tile=plan.image_size)
    except ImageError as exc:
        raise InvalidRequest(str(exc), param=exc.where or "messages", code="invalid_image") from None
    return dataclasses.replace(talk, messages=messages, images=images)


def check_request(talk: Conversation, spec) -> None:
    """What no engine could serve, refused before a model is touched: content parts the model cannot
    read (images but for a vision model), schemas past what constrained decoding allows
    (backends/schema_limits.py)."""
    readable = {"text", "image_url"} if Capability.VISION in spec.capabilities else {"text"}
    for i, message in enumerate(talk.messages):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in readable:
                what = "text and images" if "image_url" in readable else "text only"
                raise UnsupportedCapability(f"model {spec.id} reads {what}; messages[{i}].content[{j}] is a "
                                            f"{kind!r} part", param=f"messages.{i}.content.{j}")
    schemas = [((t.get("function") or {}).get("parameters"), f"tools.{i}.function.parameters")
               for i, t in enumerate(talk.tools or [])]
    if talk.response_format is not None and talk.response_format.get("schema") is not None:
        schemas.append((talk.response_format["schema"], "response_format.json_schema.schema"))
    for schema, path in schemas:
        try:
            schema_limits.check(schema or {}, path)
        except schema_limits.SchemaTooComplex as exc:
            raise InvalidRequest(str(exc), param=exc.path) from None


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request, body: wire.ChatCompletionRequest):
    spec = model_for(request, body.model, Capability.CHAT)
    answer = await answer_to(request, conversation(body), spec, body.keep_alive, body.stream,
                             adapter_for(request, body.model))
    cid, created = new_id("chatcmpl"), now()
    if body.stream:
        return sse_response(request, answer.generation, _stream(body, answer, cid, created))
    try:
        results = await until_disconnected(request, collect(answer))
    finally:
        answer.generation.close()
    choices = []
    for index, (text, calls, logprobs, reason) in enumerate(results):
        extra = {"tool_calls": [tool_call(call) for call in calls]} if calls else {}
        content = text if text or not calls else None
        choices.append(wire.choice(index, content, reason, _logprobs(body, logprobs), **extra))
    services_of(request).metrics.observe_generation(spec.id, answer.generation)
    # Plain JSON data already: skip FastAPI's jsonable_encoder pass on the hot path.
    return JSONResponse(wire.completion(cid, created, body.model, choices, usage(*answer.usage)))


def tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _logprobs(body: wire.ChatCompletionRequest, entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if not body.logprobs:
        return None
    return {"content": lp.chat_content(entries or []), "refusal": None}


async def _stream(body: wire.ChatCompletionRequest, answer: Answer, cid: str, created: int) -> AsyncIterator[bytes]:
    with_usage = body.include_usage()

    def event(*choices: dict[str, Any]) -> bytes:
        return sse(wire.chunk(cid, created, body.model, list(choices), with_usage))

    for index in range(body.n):
        yield event(wire.delta(index, role="assistant", content=""))
    async for item in answer.events():
        if isinstance(item, Delta):
            yield event(wire.delta(item.choice, content=item.text, logprobs=_logprobs(body, item.logprobs)))
        elif isinstance(item, Call):
            # The call is complete: one fragment names it, the next carries its arguments.
            head = {"index": item.call.index, "id": item.call.id, "type": "function",
                    "function": {"name": item.call.name, "arguments": ""}}
            yield event(wire.delta(item.choice, tool_calls=[head]))
            yield event(wire.delta(item.choice, tool_calls=[{"index": item.call.index,
                                                             "function": {"arguments": item.call.arguments}}]))
        elif isinstance(item, Finish):
            yield event(wire.delta(item.choice, finish_reason=item.reason))
    if with_usage and not answer.generation.abandoned:
        last = wire.chunk(cid, created, body.model, [], False)
        last["usage"] = usage(*answer.usage)
        yield sse(last)
