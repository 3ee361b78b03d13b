"""Request ids, request metrics and the access log, around every request."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import BackendError, error_response
from server.logtext import printable

log = logging.getLogger("modelyard.access")
_MODEL = "modelyard.model"  # the per-request values a route hands back to this middleware
_PLACEMENT = "modelyard.placement"


def note_model(request: Request, model_id: str) -> None:
    """Name the model a request is for in its access-log line and request metrics.

    Only the route knows the model, only this middleware writes the log line after the route
    returns; the request's state (shared by every copy of its scope) is where they meet.
    """
    request.scope["state"][_MODEL] = model_id


def note_placement(request: Request, placement: str) -> None:
    """The fit-ladder rung the request's model serves at, sent as `x-modelyard-placement`."""
    request.scope["state"][_PLACEMENT] = placement


class AccessMiddleware:
    def __init__(self, app: ASGIApp, metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
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
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                if _PLACEMENT in state:
                    headers["x-modelyard-placement"] = state[_PLACEMENT]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answer here, not in Starlette's outer error middleware, so the reply keeps its request id.
            log.exception("%s unhandled error on %s %s", request_id, printable(scope["method"]),
                          printable(scope["path"]))
            if not started_response:
                await error_response(BackendError("internal server error"), scope["path"])(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if counted:
                self.metrics.running.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", "other")
            model = state.get(_MODEL)
            self.metrics.observe_request(endpoint, model, status, elapsed)
            log.info("%s %s %s %d %.3fs %s", request_id, printable(scope["method"]), printable(scope["path"]),
                     status, elapsed, model or "-")
