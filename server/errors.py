"""The error tree, and its single mapping to the OpenAI error envelope."""

from __future__ import annotations

import logging
import math

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.logtext import printable

log = logging.getLogger("modelyard.errors")


class ModelyardError(Exception):
    """Base of every error that leaves the server as an OpenAI error body."""

    status = 500
    type = "server_error"
    code: str | None = None
    retryable = True  # openai-python retries 5xx; say so when a retry cannot help

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {} if self.retryable else {"x-should-retry": "false"}


class InvalidRequest(ModelyardError):
    status = 400
    type = "invalid_request_error"
    retryable = False


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelTooLarge(InvalidRequest):
    code = "model_too_large"


class UnsupportedCapability(InvalidRequest):
    code = "unsupported_model_capability"


class AuthenticationError(ModelyardError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    retryable = False


class HostNotAllowed(ModelyardError):
    status = 403
    type = "invalid_request_error"
    code = "host_not_allowed"
    retryable = False


class NotFound(ModelyardError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    retryable = False


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(ModelyardError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"
    retryable = False


class RequestTimeout(ModelyardError):
    """Headers or body did not arrive in time (server/connections.py)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadersTooLarge(ModelyardError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"
    retryable = False


class Unavailable(ModelyardError):
    """Transient capacity trouble: retrying later can help."""

    status = 503
    type = "server_error"
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        seconds = max(1, math.ceil(self.retry_after_s))
        return {"Retry-After": str(seconds), "retry-after-ms": str(int(self.retry_after_s * 1000))}


class QueueFull(Unavailable):
    code = "queue_full"


class QueueTimeout(Unavailable):
    code = "queue_timeout"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class TooManyConnections(Unavailable):
    code = "too_many_connections"


class ClientDisconnected(ModelyardError):
    """The client left before the answer; nobody reads this (nginx's 499, for the logs and metrics)."""

    status = 499
    type = "client_closed_request"
    code = "client_closed_request"


class ModelLoadFailed(ModelyardError):
    """The model's files or engine refused to load: the same request will fail the same way."""

    code = "model_load_failed"
    retryable = False


class AdapterLoadFailed(ModelLoadFailed):
    """A declared LoRA adapter would not load onto its base (which keeps serving)."""

    code = "adapter_load_failed"


class ModelLoadTimeout(Unavailable):
    code = "model_load_timeout"


class WorkerCrashed(ModelyardError):
    """The worker died under the request; the next request starts a fresh one."""

    status = 502
    code = "worker_crashed"


class EngineTimeout(ModelyardError):
    """The engine stopped producing (server/watchdog.py); its worker is killed and restarted."""

    status = 504
    code = "engine_timeout"


class BackendError(ModelyardError):
    """The engine raised while serving; not a crash, and a retry would do the same."""

    code = "backend_error"
    retryable = False


def error_body(exc: ModelyardError) -> dict:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


# Anthropic's Messages API answers errors in its own envelope, with its own error types by status.
ANTHROPIC_PREFIX = "/v1/messages"
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    499: "invalid_request_error", 503: "overloaded_error"}


def anthropic_error_body(exc: ModelyardError) -> dict:
    kind = _ANTHROPIC_TYPES.get(exc.status, "api_error" if exc.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_response(exc: ModelyardError, path: str = "") -> JSONResponse:
    """The error in the envelope of the API the request's path belongs to."""
    body = anthropic_error_body(exc) if path.startswith(ANTHROPIC_PREFIX) else error_body(exc)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers())


def _param_of(loc: tuple) -> str | None:
    # The first element says where the value was (body, query, path, header); a field may be named "query".
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc) or None


def from_validation(exc: RequestValidationError) -> InvalidRequest:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = _param_of(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    return InvalidRequest(message, param=param)


def install(app) -> None:
    """Every error, FastAPI's own included, leaves through error_response."""

    @app.exception_handler(ModelyardError)
    async def _modelyard(request: Request, exc: ModelyardError):
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(from_validation(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        mapped = ModelyardError(str(exc.detail))
        mapped.status = exc.status_code
        mapped.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        mapped.code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        mapped.retryable = exc.status_code >= 500
        return error_response(mapped, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", printable(request.method), printable(request.url.path))
        return error_response(BackendError("internal server error"), request.url.path)
