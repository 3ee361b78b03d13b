"""A Server-Sent Events response, sent from the request's own task.

Starlette's StreamingResponse runs the body in a task group beside a second disconnect listener
(uvicorn speaks ASGI 2.3): a task switch and a wake-up more per event. Ours sends each event as the
body yields it; the body itself (server/generation.py `sse_response`) stops the engine when the client
leaves, which ends the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str] | None = None):
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers({**HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for data in self.body_iterator:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
