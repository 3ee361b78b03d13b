"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API onto the chat answer path."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from backends.capability import Capability
from backends.contract import TokenizeParams, TokenizeResult
from server.answer import Answer, Call, Delta, Finish, collect
from server.errors import ModelyardError, anthropic_error_body
from server.generation import Generation, adapter_for, model_for, until_disconnected, watched
from server.json_response import JSONResponse
from server.protocol import messages as wire
from server.protocol.common import new_id
from server.routes.chat import answer_to, check_request, with_images
from server.services import services_of

router = APIRouter()


@router.post("/v1/messages")
async def create_message(request: Request, body: wire.MessagesRequest):
    spec = model_for(request, body.model, Capability.CHAT)
    answer = await answer_to(request, wire.conversation(body), spec, body.keep_alive, body.stream,
                             adapter_for(request, body.model))
    mid = new_id("msg", "_")
    if body.stream:
        return StreamingResponse(_stream(request, body, answer, mid), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        [(text, calls, _, reason)] = await until_disconnected(request, collect(answer))
    finally:
        answer.generation.close()
    services_of(request).metrics.observe_generation(spec.id, answer.generation)
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
    content += [{"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
                for call in calls]
    return JSONResponse(wire.message(mid, body.model, content, reason, answer.usage))


async def _stream(request: Request, body: wire.MessagesRequest, answer: Answer, mid: str) -> AsyncIterator[bytes]:
    async def events() -> AsyncIterator[bytes]:
        yield _sse("message_start", {"type": "message_start",
                                     "message": wire.message(mid, body.model, [], None, (0, 0))})
        yield _sse("ping", {"type": "ping"})
        block, text_open, reason = -1, False, "stop"
        async for item in answer.events():
            if isinstance(item, Delta) and item.text:
                if not text_open:
                    block, text_open = block + 1, True
                    yield _sse("content_block_start", {"type": "content_block_start", "index": block,
                                                       "content_block": {"type": "text", "text": ""}})
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": block,
                                                   "delta": {"type": "text_delta", "text": item.text}})
            elif isinstance(item, Call):
                if text_open:
                    yield _sse("content_block_stop", {"type": "content_block_stop", "index": block})
                    text_open = False
                block += 1
                yield _sse("content_block_start", {"type": "content_block_start", "index": block, "content_block": {
                    "type": "tool_use", "id": item.call.id, "name": item.call.name, "input": {}}})
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": block, "delta": {
                    "type": "input_json_delta", "partial_json": item.call.arguments}})
                yield _sse("content_block_stop", {"type": "content_block_stop", "index": block})
            elif isinstance(item, Finish):
                reason = item.reason
        if text_open:
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": block})
        prompt, completion = answer.usage
        yield _sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": wire.STOP_REASONS.get(reason, reason),
                                               "stop_sequence": None},
                                     "usage": {"input_tokens": prompt, "output_tokens": completion}})
        yield _sse("message_stop", {"type": "message_stop"})

    try:
        async for data in watched(request, answer.generation, events()):
            yield data
    except ModelyardError as exc:
        yield _sse("error", anthropic_error_body(exc))
    finally:
        services_of(request).metrics.observe_generation(answer.generation.spec.id, answer.generation)


def _input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the JSON object Anthropic's tool_use block carries."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request, body: wire.CountTokensRequest):
    spec = model_for(request, body.model, Capability.CHAT)
    talk = wire.conversation(body)
    check_request(talk, spec)  # an image for a text model is refused as a chat would refuse it
    talk = await with_images(request, talk, spec)
    generation = await Generation.open(request, spec, None, [TokenizeParams(messages=talk.messages, tools=talk.tools,
                                                                            images=talk.images)])
    try:
        [(_, raw)] = await until_disconnected(request, generation.collect())
    finally:
        generation.close()
    return JSONResponse({"input_tokens": len(cast(TokenizeResult, raw)["tokens"])})
