"""POST /v1/responses, GET and DELETE /v1/responses/{id}: the Responses API onto the chat answer path."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from backends.capability import Capability
from server.answer import Answer, Call, Delta, Finish
from server.errors import InvalidRequest, ModelyardError, NotFound
from server.generation import adapter_for, model_for, until_disconnected, watched
from server.json_response import JSONResponse
from server.protocol import logprobs as lp
from server.protocol import responses as wire
from server.protocol.common import new_id
from server.routes.chat import answer_to
from server.services import services_of

router = APIRouter()


@router.post("/v1/responses")
async def create_response(request: Request, body: wire.ResponsesRequest):
    spec = model_for(request, body.model, Capability.CHAT)
    store = services_of(request).responses
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        stored = store.get(body.previous_response_id)
        if stored is None:
            raise InvalidRequest(f"Previous response with id '{body.previous_response_id[:64]}' not found "
                                 "(responses are kept only with store: true, for a while)",
                                 param="previous_response_id", code="previous_response_not_found")
        history = stored.messages
    talk = wire.conversation(body, history)
    answer = await answer_to(request, talk, spec, body.keep_alive, body.stream, adapter_for(request, body.model))
    writer = wire.ResponseWriter(new_id("resp", "_"), body, time.time())

    def keep(final: dict[str, Any]) -> None:
        if body.store:
            store.put(writer.rid, final, [*talk.messages[1 if body.instructions else 0:], *writer.as_messages()])

    if body.stream:
        return StreamingResponse(_stream(request, answer, writer, keep), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        final = await until_disconnected(request, _collect(answer, writer))
    finally:
        answer.generation.close()
    services_of(request).metrics.observe_generation(spec.id, answer.generation)
    keep(final)
    return JSONResponse(final)


async def _writes(answer: Answer, writer: wire.ResponseWriter) -> AsyncIterator[dict[str, Any]]:
    """The answer's events as Responses events; the last one carries the finished response."""
    reason = "stop"
    async for item in answer.events():
        if isinstance(item, Delta):
            for event in writer.text(item.text, lp.chat_content(item.logprobs) if item.logprobs else None):
                yield event
        elif isinstance(item, Call):
            for event in writer.call(item.call.id, item.call.name, item.call.arguments):
                yield event
        elif isinstance(item, Finish):
            reason = item.reason
    _, events = writer.finish(reason, answer.usage)
    for event in events:
        yield event


async def _collect(answer: Answer, writer: wire.ResponseWriter) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async for event in _writes(answer, writer):
        last = event
    return last["response"]


async def _stream(request: Request, answer: Answer, writer: wire.ResponseWriter, keep) -> AsyncIterator[bytes]:
    async def events() -> AsyncIterator[bytes]:
        for event in writer.start():
            yield _sse(event)
        async for event in _writes(answer, writer):
            if event["type"] in ("response.completed", "response.incomplete"):
                keep(event["response"])
            yield _sse(event)

    try:
        async for data in watched(request, answer.generation, events()):
            yield data
    except ModelyardError as exc:
        yield _sse(writer.failed({"code": exc.code or exc.type, "message": exc.message}))
    finally:
        services_of(request).metrics.observe_generation(answer.generation.spec.id, answer.generation)


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str):
    stored = services_of(request).responses.get(response_id)
    if stored is None:
        raise NotFound(f"Response with id '{response_id[:64]}' not found.", param="response_id")
    return JSONResponse(stored.response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str):
    if not services_of(request).responses.delete(response_id):
        raise NotFound(f"Response with id '{response_id[:64]}' not found.", param="response_id")
    return {"id": response_id, "object": "response", "deleted": True}
