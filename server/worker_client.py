"""The server's end of the pipe: starting, calling and stopping model worker processes.

The other end is backends/worker_main.py; what crosses is in backends/contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends import codec
from backends.contract import (
    TEXT_METHODS,
    CallMessage,
    ControlMessage,
    ErrorCode,
    ErrorReply,
    Handshake,
    Method,
    Params,
    Reply,
    Result,
    encode_params,
    merge_text_chunks,
    method_of,
)
from backends.plan import LoadPlan, type_name
from server.errors import (
    AdapterLoadFailed,
    BackendError,
    ContextLengthExceeded,
    EngineTimeout,
    InvalidRequest,
    ModelLoadFailed,
    ModelyardError,
    UnsupportedCapability,
    WorkerCrashed,
)
from server.watchdog import CallState, Timeouts, watch

log = logging.getLogger("modelyard.workers")

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_STREAM_LIMIT = 512 * 1024 * 1024  # one line may carry a base64 image
_CANCELLED = object()
# Backpressure: past this many unread chunks of one call the worker is asked to pause it, and to go
# on once its reader is back down to _RESUME_AT (a client that does not read holds ~64 chunks here).
_PAUSE_AT = 64
_RESUME_AT = 16
# A reader that fell behind reads up to this many waiting text chunks as one. Bounded: a client that
# stopped reading is held back by buffers counted in bytes, and the fewer bytes a token takes on the
# wire, the more tokens the engine would generate for nobody before the pause reaches it.
_MERGE_MAX = 4


class WorkerGone(Exception):
    pass


class Call:
    """One request in flight on a worker: iterate for chunks; `final` holds the closing result.

    A text call's chunks that wait unread are read a few at a time as one (merged): a reader that fell
    behind the engine catches up in fewer passes than one event per token."""

    def __init__(self, worker: WorkerProcess, call_id: int, method: Method):
        self._worker = worker
        self.id = call_id
        self.method = method
        self._inbox: deque = deque()
        self._loop = asyncio.get_running_loop()  # once: asking for it each time costs a getpid() syscall
        self._waiter: asyncio.Future | None = None
        self._unread = 0  # chunks in the inbox
        self._merge = method in TEXT_METHODS
        self.final: Result | None = None
        self.done = False
        self.cancelled = False  # stopped before its end: `final` stays None
        self.started = time.monotonic()
        self.produced = False  # a chunk has come (the watchdog's first token)
        self.paused = False  # the worker was asked to stop producing until the reader catches up

    def _deliver(self, message: Any) -> None:
        self._inbox.append(message)
        if isinstance(message, dict) and "c" in message:
            self.produced = True
            self._unread += 1
            if not self.paused and self._unread >= _PAUSE_AT:
                self._flow(paused=True)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _flow(self, paused: bool) -> None:
        self.paused = paused
        self._worker._send_nowait({"op": "flow", "id": self.id, "paused": paused})

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict[str, Any]:
        inbox = self._inbox
        if self.done and not inbox:
            raise StopAsyncIteration
        while not inbox:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = inbox.popleft()
        if message is _CANCELLED:
            raise StopAsyncIteration
        if isinstance(message, ModelyardError):
            self.done = True
            raise message
        if "c" in message:
            chunk = message["c"]
            self._unread -= 1
            if self._merge and inbox and isinstance(inbox[0], dict) and "c" in inbox[0]:
                chunks = [chunk]
                while len(chunks) < _MERGE_MAX and inbox and isinstance(inbox[0], dict) and "c" in inbox[0]:
                    chunks.append(inbox.popleft()["c"])
                self._unread -= len(chunks) - 1
                chunk = merge_text_chunks(chunks)
            if self.paused and self._unread <= _RESUME_AT:
                self._flow(paused=False)
            return chunk
        self.done = True
        self._worker._calls.pop(self.id, None)
        if "end" in message:
            self.final = message["end"]
            raise StopAsyncIteration
        raise _map_error(message["err"], self._worker.label)

    async def result(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        chunks = [chunk async for chunk in self]
        return chunks, self.final or {}

    def cancel(self) -> None:
        """Tell the engine to stop and wake any reader; safe to call at any time, even twice.

        Synchronous on purpose: it runs in `finally` blocks of cancelled tasks.
        """
        if self.done:
            return
        self.done = self.cancelled = True
        self._worker._calls.pop(self.id, None)
        self._deliver(_CANCELLED)
        self._worker._send_nowait({"op": "cancel", "id": self.id})

    def fail(self, error: ModelyardError) -> None:
        """End the call with `error` for its reader (after the chunks already here); stop the engine."""
        if self.done or self._worker._calls.pop(self.id, None) is None:
            return
        self._deliver(error)
        self._worker._send_nowait({"op": "cancel", "id": self.id})


_INVALID = {ErrorCode.UNSUPPORTED_CAPABILITY: UnsupportedCapability,
            ErrorCode.CONTEXT_LENGTH_EXCEEDED: ContextLengthExceeded,
            ErrorCode.ADAPTER_LOAD_FAILED: AdapterLoadFailed}


def _map_error(err: ErrorReply, label: str) -> ModelyardError:
    if err["kind"] == "invalid":
        code = err.get("code")
        kind = _INVALID.get(ErrorCode(code), InvalidRequest) if code else InvalidRequest
        return kind(err["message"], param=err.get("param"), code=code)
    if err["kind"] == "contract":
        return BackendError(f"internal error: the server sent model {label} a call it does not understand: "
                            f"{err['message']}")
    return BackendError(f"model {label} failed: {err['message']}")


class Pipe(asyncio.Protocol):
    """The server's end of a worker's socket. Lines are handled as they arrive, in the event loop's
    own read callback: a burst of lines costs one wake-up, and no task switch per read."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = loop.create_future()  # the exception that closed it, or None
        self.on_line: Callable[[bytes], None] | None = None  # set once the handshake is read
        self.on_data: Callable[[], None] = lambda: None
        self._early: list[bytes] = []  # lines before on_line is set (the handshake's answer)
        self._arrived = loop.create_future()
        self._lines = codec.LineSplitter()
        self._drained: asyncio.Future | None = None  # set while the socket's write buffer is full

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.on_data()
        lines = self._lines.feed(data)
        if self._lines.pending > _STREAM_LIMIT:
            self.transport.close()
            self._close(ValueError(f"a line longer than {_STREAM_LIMIT} bytes"))
            return
        if self.on_line is None:
            self._early.extend(lines)
            if self._early and not self._arrived.done():
                self._arrived.set_result(None)
            return
        for line in lines:
            self.on_line(line)

    async def first_line(self) -> bytes | None:
        """The first line (the worker's answer to the handshake); None if it closed first."""
        await asyncio.wait({self._arrived, self.closed}, return_when=asyncio.FIRST_COMPLETED)
        return self._early.pop(0) if self._early else None

    def serve(self, on_line: Callable[[bytes], None]) -> None:
        """From now on every line goes to `on_line`, starting with any that came with the handshake's."""
        early, self._early = self._early, []
        self.on_line = on_line
        for line in early:
            on_line(line)

    def eof_received(self) -> bool:
        return False  # close the transport: the worker is gone

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(exc)

    def _close(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed.done():
            raise ConnectionResetError("the worker's socket is closed")
        if self._drained is not None:
            await self._drained

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class WorkerProcess:
    """A running worker: its pid, its own memory account, and calls multiplexed on one socket."""

    def __init__(self, plan: LoadPlan, process: asyncio.subprocess.Process, pipe: Pipe):
        self.plan = plan
        self.process = process
        self.pid = process.pid
        self._pipe = pipe
        self._writer = pipe
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count(1)
        self._stats: dict[int, asyncio.Future] = {}
        self._parks: dict[int, asyncio.Future] = {}  # park requests awaiting their "parked" or "err"
        self.reported_mb = 0.0
        self.exited = asyncio.Event()
        self.stopping = False
        self._on_exit: list[Callable[[WorkerProcess], None]] = []
        self._pump: asyncio.Task | None = None  # the reader; held so the loop does not drop it
        self._watchdog: asyncio.Task | None = None
        self.last_heard = self.last_output = time.monotonic()
        self.unhealthy: str | None = None  # why the watchdog killed it

    @property
    def label(self) -> str:
        return f"{self.plan.model_id}/{self.plan.backend}/pid={self.pid}"

    def on_exit(self, callback: Callable[[WorkerProcess], None]) -> None:
        self._on_exit.append(callback)

    async def _handshake(self) -> None:
        handshake: Handshake = {"plan_type": type_name(type(self.plan)), "plan": self.plan.to_json()}
        self._writer.write(json.dumps(handshake).encode() + b"\n")
        await self._writer.drain()
        line = await self._pipe.first_line()
        if not line:
            code = await self.process.wait()
            raise ModelLoadFailed(f"model {self.plan.model_id} failed to load: the worker exited with code {code}")
        message = json.loads(line)
        if message.get("op") == "load_error":
            await self.process.wait()
            raise ModelLoadFailed(f"model {self.plan.model_id} failed to load: {message['message']}")
        self.reported_mb = float(message.get("memory_mb", 0.0))
        self._pump = asyncio.create_task(self._read_loop(), name=f"worker-{self.pid}")

    async def _read_loop(self) -> None:
        """Lines are dispatched by the pipe as they come; this waits for the end of the channel."""
        pipe = self._pipe

        def on_line(line: bytes) -> None:
            try:
                self._dispatch(codec.decode(line))
            except ValueError as exc:  # not JSON: the channel is broken
                pipe.close()
                pipe._close(exc)

        def on_data() -> None:
            self.last_heard = time.monotonic()

        pipe.on_data = on_data
        pipe.serve(on_line)
        try:
            exc = await pipe.closed
            if exc is not None:
                log.warning("worker %s: broken channel: %s", self.label, exc)
        finally:
            await self._finish()

    def _dispatch(self, message: Reply) -> None:
        if "op" in message:
            return  # a heartbeat
        call_id = message["id"]
        if "stats" in message:
            future = self._stats.pop(call_id, None)
            if future and not future.done():
                future.set_result(message["stats"])
        elif call_id in self._parks:
            self._parks.pop(call_id).set_result(message)
        elif (call := self._calls.get(call_id)) is not None:
            self.last_output = self.last_heard
            if "c" in message and "end" in message:  # the last chunk and the result in one line
                call._deliver({"c": message["c"]})
                call._deliver({"end": message["end"]})
            else:
                call._deliver(message)

    async def _finish(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        code = await self.process.wait()
        if not self.stopping and not self.unhealthy:
            why = f"signal {-code}" if code < 0 else f"exit code {code}"
            log.error("worker %s died (%s)", self.label, why)
        error = WorkerCrashed(
            f"the worker serving model {self.plan.model_id} stopped ({'unloaded' if self.stopping else 'crashed'}); "
            "retry to start a fresh one"
        )
        for call in list(self._calls.values()):
            call._deliver(error)
        self._calls.clear()
        for future in (*self._stats.values(), *self._parks.values()):
            if not future.done():
                future.set_exception(WorkerGone())
        self.exited.set()
        for callback in self._on_exit:
            callback(self)

    def _send_nowait(self, message: ControlMessage) -> None:
        if not self.exited.is_set() and not self._writer.is_closing():
            self._writer.write(codec.encode(message))

    def watch(self, timeouts: Timeouts) -> None:
        """Start the watchdog (once loaded: a load has its own timeout, and no heartbeat before)."""
        self.last_heard = self.last_output = time.monotonic()
        self._watchdog = asyncio.create_task(watch(self, timeouts), name=f"watchdog-{self.pid}")

    def text_calls(self) -> list[CallState]:
        return [CallState(c.started, c.produced, c.paused) for c in self._calls.values() if c.method in TEXT_METHODS]

    def kill_hung(self, why: str) -> None:
        """The watchdog's verdict: fail its calls with a timeout (504) and kill it; the arbiter
        forgets it when it exits, and the next request starts a fresh one."""
        if self.unhealthy or self.exited.is_set():
            return
        self.unhealthy = why
        log.error("worker %s is hung (%s); killing it", self.label, why)
        error = EngineTimeout(f"model {self.plan.model_id} stopped responding ({why}); its worker was stopped "
                              "and a fresh one starts on the next request")
        for call in list(self._calls.values()):
            call._deliver(error)
        self._calls.clear()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # works on a stopped process too

    async def _send(self, message: CallMessage | ControlMessage) -> None:
        if self.unhealthy:
            raise EngineTimeout(f"model {self.plan.model_id} stopped responding; retry to start a fresh worker")
        if self.exited.is_set():
            raise WorkerCrashed(f"the worker serving model {self.plan.model_id} is gone; retry to start a fresh one")
        try:
            self._writer.write(codec.encode(message))
            await self._writer.drain()
        except ConnectionError:
            raise WorkerCrashed(f"the worker serving model {self.plan.model_id} is gone") from None

    async def call(self, params: Params, stream: bool = True) -> Call:
        """Start the adapter method these params are for; read its chunks from the Call. Not
        `stream`ed: nobody reads the chunks before the end, so the worker may send them merged."""
        method = method_of(params)
        call = Call(self, next(self._ids), method)
        self._calls[call.id] = call
        message: CallMessage = {"op": "call", "id": call.id, "method": method, "params": encode_params(params)}
        if not stream:
            message["stream"] = False
        await self._send(message)
        return call

    async def stats(self, timeout: float = 1.0) -> dict[str, Any]:
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._stats[call_id] = future
        await self._send({"op": "stats", "id": call_id})
        return await asyncio.wait_for(future, timeout)

    async def park(self, dest: Path) -> int:
        """Have the engine write its warm copy into `dest`; the bytes it takes. The caller bounds
        the time and stops the worker afterwards, whatever happened."""
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._parks[call_id] = future
        await self._send({"op": "park", "id": call_id, "dest": str(dest)})
        reply = await future
        if "err" in reply:
            raise _map_error(reply["err"], self.label)
        return int(reply["parked"]["bytes"])

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ask politely, then kill; returns once the process is reaped."""
        self.stopping = True
        if not self.exited.is_set():
            with contextlib.suppress(WorkerCrashed):
                await self._send({"op": "stop"})
            try:
                await asyncio.wait_for(self.exited.wait(), grace_s)
            except TimeoutError:
                log.warning("worker %s ignored stop; killing it", self.label)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                await self.exited.wait()
        self._writer.close()


class WorkerFactory:
    """Starts one worker process per model load."""

    def __init__(self, python: str = sys.executable, timeouts: Timeouts | None = None):
        self.python = python
        self.timeouts = timeouts or Timeouts()

    async def start(self, plan: LoadPlan) -> WorkerProcess:
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_PROJECT_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        env.setdefault("HF_HUB_OFFLINE", "1")  # runtime never reaches for the hub
        try:
            process = await asyncio.create_subprocess_exec(
                self.python, "-m", "backends.worker_main", "--fd", str(child.fileno()),
                pass_fds=(child.fileno(),), start_new_session=True, env=env, stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        _, pipe = await asyncio.get_running_loop().create_unix_connection(Pipe, sock=parent)
        worker = WorkerProcess(plan, process, pipe)
        try:
            await worker._handshake()
        except BaseException:
            # a failed or abandoned (timed out) load must not leave a process behind
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            pipe.close()
            raise
        log.info("worker %s ready (reports %.0f MiB)", worker.label, worker.reported_mb)
        worker.watch(self.timeouts)
        return worker
