"""GET /admin/events: the arbiter as a server-sent event stream (the page's memory view, `modelyard events`).

    retry: 2000
    event: hello       {"epoch", "resumed", "history": [records], "loads": {model: [records]}} once, first
    event: snapshot    /admin/ps's body and "at" (server wall time): at once, then whenever it changed
    id: 5f3a9c1e-42
    event: record      a lifecycle record (server/events.py's Record): loading, swapped_in, ...
    : keep-alive       a comment after HEARTBEAT_S of quiet

A reconnecting client's Last-Event-ID limits the hello's history to the records it missed
("resumed": true); an id from before a restart, or none, gets the whole history ("resumed": false).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from server.errors import Unavailable
from server.events import MAX_SUBSCRIBERS, Record
from server.services import services_of

router = APIRouter(prefix="/admin")
HEARTBEAT_S = 15.0  # below the idle timeouts of common proxies


def message(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _last_event_id(request: Request, epoch: str) -> int | None:
    """The record id a reconnecting client saw last, if it was this hub's."""
    seen, _, number = request.headers.get("last-event-id", "").partition("-")
    return int(number) if seen == epoch and number.isdigit() else None


@router.get("/events")
async def events(request: Request) -> StreamingResponse:
    hub = services_of(request).events
    subscription = hub.subscribe()
    if subscription is None:
        raise Unavailable(f"{MAX_SUBSCRIBERS} event streams are open already", retry_after_s=5)
    after = _last_event_id(request, hub.epoch)
    hello = {"epoch": hub.epoch, "resumed": after is not None, "history": [r.wire() for r in hub.history(after or 0)],
             "loads": {model: [r.wire() for r in records] for model, records in hub.loads().items()}}
    first = hub.snapshot()

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def stream() -> AsyncIterator[bytes]:
        # The stream ends at once when the client leaves, not at the next heartbeat's write.
        watcher = asyncio.ensure_future(gone())
        watcher.add_done_callback(lambda w: w.cancelled() or subscription.close())
        try:
            yield b"retry: 2000\n\n" + message("hello", hello) + message("snapshot", first)
            while (due := await subscription.next(HEARTBEAT_S)) is not None:
                if not due:
                    yield b": keep-alive\n\n"
                for kind, body in due:
                    if isinstance(body, Record):
                        yield message(kind, body.wire(), f"{hub.epoch}-{body.id}")
                    else:
                        yield message(kind, body)
        finally:
            watcher.cancel()
            hub.unsubscribe(subscription)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
