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


def error_response(exc: ModelyardError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers())


def _param_of(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


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
    async def _modelyard(_: Request, exc: ModelyardError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(from_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        mapped = ModelyardError(str(exc.detail))
        mapped.status = exc.status_code
        mapped.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        mapped.code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        mapped.retryable = exc.status_code >= 500
        return error_response(mapped)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", printable(request.method), printable(request.url.path))
        return error_response(BackendError("internal server error"))
