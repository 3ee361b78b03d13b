"""The generation hub every model route goes through: find the model, lease it from the arbiter,
call its worker, watch the client, and stream or collect what the engine produces.

    route -> model_for() -> Generation.open(): arbiter lease + worker calls -> events() / collect()
          -> close(): cancel what still runs, release the lease
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request

from backends.capability import Capability
from backends.contract import Params, SamplingParams
from backends.spec import BaseSpec
from server.access import note_model, note_placement
from server.arbiter import Lease
from server.errors import ClientDisconnected, InvalidRequest, ModelyardError, error_body
from server.event_stream import EventStream
from server.inflight import InFlight
from server.json_response import dumps
from server.services import services_of
from server.worker_client import Call

T = TypeVar("T")


def model_for(request: Request, name: str, capability: Capability | frozenset[Capability]) -> BaseSpec:
    """The model a request names, able to do what the request asks; named in its access log."""
    spec = services_of(request).registry.resolve(name)
    note_model(request, spec.id if spec is not None else "unknown")
    return services_of(request).registry.require(name, capability)


def adapter_for(request: Request, name: str) -> str | None:
    """The LoRA adapter a request's model name asks for (`<model>:<adapter>` or an alias), or None."""
    return services_of(request).registry.adapter(name)


def check_fan_out(params: list[Params], limit: int, context_length: Callable[[], int | None]) -> None:
    """Refuse a request asking for more than `limit` tokens: prompts x n x max_tokens, each call's
    max_tokens counted up to the model's context (no call generates more than that)."""
    text = [p for p in params if isinstance(p, SamplingParams)]
    if not text or (all(p.max_tokens is not None for p in text) and sum(p.max_tokens for p in text) <= limit):
        return  # the common case decides without planning the model
    ceiling = context_length() or limit
    each = [min(p.max_tokens or ceiling, ceiling) for p in text]
    if sum(each) > limit:
        raise InvalidRequest(
            f"this request asks for up to {sum(each)} tokens ({len(each)} completions of up to {max(each)}); "
            f"the server allows {limit} per request: lower n, max_tokens or the number of prompts",
            param="max_tokens", code="request_too_large")


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
    """Calls on one leased worker (one per choice or prompt), each with its first event in hand.

    Peeking the first event means an engine's refusal (prompt too long, bad parameter) still
    becomes a real HTTP status, not an error inside a 200 stream.
    """

    def __init__(self, spec: BaseSpec, lease: Lease, calls: list[Call], firsts: list[dict[str, Any] | None],
                 started: float, in_flight: InFlight):
        self.spec = spec
        self.lease = lease
        self.calls = calls
        self.firsts = firsts
        self.started = started
        self.first_token_at: float | None = None
        self.usage = (0, 0)  # prompt, completion tokens; set by the route once known
        self._in_flight = in_flight
        in_flight.add(self)

    @classmethod
    async def open(cls, request: Request, spec: BaseSpec, keep_alive: float | None,
                   params: list[Params], stream: bool = True) -> Generation:
        """`stream` False: the answer is read whole, so the worker may send it in fewer, merged lines."""
        services = services_of(request)
        check_fan_out(params, services.settings.max_request_tokens,
                      lambda: services.arbiter.plan(spec)[0].context_length)

        async def start() -> Generation:
            started = time.perf_counter()
            lease = await services.arbiter.acquire(spec, keep_alive)
            note_placement(request, lease.placement)
            calls: list[Call] = []
            try:
                calls = [await lease.worker.call(p, stream) for p in params]
                firsts = [await _first(call) for call in calls]
            except BaseException:
                for call in calls:
                    call.cancel()
                lease.release()
                raise
            return cls(spec, lease, calls, firsts, started, services.in_flight)

        return await until_disconnected(request, start())

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self.lease.release()
        self._in_flight.discard(self)

    def fail(self, error: ModelyardError) -> None:
        """End every call with `error` (the shutdown grace ran out); the route's reader raises it."""
        for call in self.calls:
            call.fail(error)

    @property
    def abandoned(self) -> bool:
        """The client left and the calls were stopped: nobody reads what is left."""
        return any(call.cancelled for call in self.calls)

    def finals(self) -> list[dict[str, Any]]:
        """Each call's result, once its events are read (and the generation was not abandoned)."""
        return [call.final or {} for call in self.calls]

    def events(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """(call index, chunk) in arrival order; afterwards each call's `final` is set."""
        if len(self.calls) == 1:
            return self._one(0)  # directly: one async-generator layer less per chunk
        return self._merged()

    async def _merged(self) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        # Bounded, so a reader that falls behind stops the pumps and backpressure reaches the worker.
        queue: asyncio.Queue = asyncio.Queue(maxsize=len(self.calls))

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
        """Every call's chunks and result (non-streaming)."""
        per_call: list[list[dict[str, Any]]] = [[] for _ in self.calls]
        async for index, chunk in self.events():
            per_call[index].append(chunk)
        return list(zip(per_call, self.finals(), strict=True))


async def _first(call: Call) -> dict[str, Any] | None:
    try:
        return await call.__anext__()
    except StopAsyncIteration:
        return None


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else dumps(payload)
    return b"data: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"


async def watched(request: Request, generation: Generation, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`body` as a response streams it: a client that leaves stops the engine at once (not at the next
    write), and the calls are cancelled and the lease released however the stream ends."""
    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(lambda w: w.cancelled() or generation.close())
    try:
        async for data in body:
            yield data
    finally:
        watcher.cancel()
        generation.close()


def sse_response(request: Request, generation: Generation, body: AsyncIterator[bytes]) -> EventStream:
    """Stream SSE; on a mid-stream failure send an error event then [DONE]; always free the lease.
    A client that leaves stops the engine at once (not at the next write)."""

    async def stream() -> AsyncIterator[bytes]:
        watcher = asyncio.ensure_future(_disconnected(request))
        watcher.add_done_callback(lambda w: w.cancelled() or generation.close())
        try:
            async for data in body:
                yield data
        except ModelyardError as exc:
            yield sse(error_body(exc))
        finally:
            watcher.cancel()
            generation.close()
            services_of(request).metrics.observe_generation(generation.spec.id, generation)
        yield DONE

    return EventStream(stream())
