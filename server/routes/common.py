"""What every model route does: find the model, lease it, call its worker, watch the client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse

from backends.capability import Capability
from server.errors import ClientDisconnected, ModelNotFound, ModelyardError, UnsupportedCapability, error_body
from server.workers import Call

T = TypeVar("T")


def services(request: Request):
    return request.app.state.services


def resolve(request: Request, name: str, capability: Capability):
    """The spec a client-facing model name refers to, checked for the capability asked of it."""
    spec = services(request).registry.resolve(name)
    request.state.model_label = spec.id if spec is not None else "unknown"
    if spec is None:
        raise ModelNotFound(f"The model '{name[:100]}' does not exist or you do not have access to it.",
                            param="model")
    if capability not in spec.capabilities:
        raise UnsupportedCapability(f"model {spec.id} does not support {capability.value}", param="model")
    return spec


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client goes away first (a queued waiter leaves the queue)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    try:
        await task  # let it unwind (and release what it held)
    except (asyncio.CancelledError, Exception):
        pass
    raise ClientDisconnected("the client closed the connection")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Generation:
    """`n` calls on one leased worker, each with its first event already in hand.

    Peeking the first event means an engine's refusal (prompt too long, bad parameter) still
    becomes a real HTTP status, not an error inside a 200 stream.
    """

    def __init__(self, lease, calls: list[Call], firsts: list[dict[str, Any] | None], started: float):
        self.lease = lease
        self.calls = calls
        self.firsts = firsts
        self.started = started
        self.first_token_at: float | None = None
        self.usage = (0, 0)  # prompt, completion tokens; set by the route once known

    @classmethod
    async def open(cls, request: Request, spec, keep_alive: float | None, method: str,
                   params: list[dict[str, Any]]) -> Generation:
        async def start() -> Generation:
            started = time.perf_counter()
            lease = await services(request).arbiter.acquire(spec, keep_alive)
            calls: list[Call] = []
            try:
                calls = [await lease.worker.call(method, p) for p in params]
                firsts = [await _first(call) for call in calls]
            except BaseException:
                for call in calls:
                    call.cancel()
                lease.release()
                raise
            generation = cls(lease, calls, firsts, started)
            request.state.queue_wait_s = lease.waited_s
            return generation

        return await until_disconnected(request, start())

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self.lease.release()

    async def events(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """(choice index, chunk) in arrival order; afterwards each call's `final` is set."""
        if len(self.calls) == 1:
            async for item in self._one(0):
                yield item
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                async for item in self._one(index):
                    await queue.put(item)
                await queue.put(None)
            except BaseException as exc:
                await queue.put(exc)

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self.calls))]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    async def _one(self, index: int) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        first = self.firsts[index]
        if first is not None:
            self._mark_first()
            yield index, first
        async for chunk in self.calls[index]:
            self._mark_first()
            yield index, chunk

    def _mark_first(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    async def collect(self) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
        """Every call's chunks and final result (non-streaming)."""
        per_call: list[list[dict[str, Any]]] = [[] for _ in self.calls]
        async for index, chunk in self.events():
            per_call[index].append(chunk)
        return [(chunks, call.final or {}) for chunks, call in zip(per_call, self.calls, strict=True)]


async def _first(call: Call) -> dict[str, Any] | None:
    try:
        return await call.__anext__()
    except StopAsyncIteration:
        return None


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def sse_response(request: Request, generation: Generation, body: AsyncIterator[bytes]) -> StreamingResponse:
    """Stream SSE; on a mid-stream failure send an error event then [DONE]; always free the lease."""

    async def stream() -> AsyncIterator[bytes]:
        watcher = asyncio.ensure_future(_disconnected(request))
        watcher.add_done_callback(lambda w: w.cancelled() or generation.close())
        try:
            async for data in body:
                yield data
        except ModelyardError as exc:
            request.state.stream_error = exc.code or exc.type
            yield sse(error_body(exc))
        finally:
            watcher.cancel()
            generation.close()
            services(request).metrics.observe_generation(request, generation)
        yield DONE

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
