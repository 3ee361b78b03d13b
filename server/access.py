"""Request ids, request metrics and the access log, around every request."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import BackendError, error_response

log = logging.getLogger("modelyard.access")


class AccessMiddleware:
    def __init__(self, app: ASGIApp, metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        started_response = False
        counted = scope["path"].startswith("/v1/")
        if counted:
            self.metrics.running.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            nonlocal started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answer here, not in Starlette's outer error middleware, so the reply keeps its request id.
            log.exception("%s unhandled error on %s %s", request_id, scope["method"], scope["path"])
            if not started_response:
                await error_response(BackendError("internal server error"))(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if counted:
                self.metrics.running.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", "other")
            model = scope.get("state", {}).get("model_label")
            self.metrics.observe_request(endpoint, model, status, elapsed)
            log.info("%s %s %s %d %.3fs %s", request_id, scope["method"], scope["path"], status, elapsed,
                     model or "-")
