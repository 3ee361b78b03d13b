"""The worker's end of the pipe: the main loop of a model worker process.

Started by the server (server/worker_client.py) as `python -m backends.worker_main --fd N`. It speaks
newline-delimited JSON over the inherited socket N (the shapes are in backends/contract.py). The
first line it reads is the model's LoadPlan and the class to read it as (only that engine's spec
module is imported: a worker starts in a few tens of milliseconds); it loads the plan's adapter, answers `ready` (with the
adapter's own memory account) or `load_error`, then serves:

  in:  {"op": "call", "id": 7, "method": "chat", "params": {...}, "stream": false}
       {"op": "cancel", "id": 7}   {"op": "stats", "id": 8}   {"op": "stop"}
       {"op": "park", "id": 9, "dest": "/dev/shm/..."}   write the warm copy (the server stops us after)
       {"op": "flow", "id": 7, "paused": true}   (the client is not reading: stop producing for now)
  out: {"id": 7, "c": {...}}  one chunk      {"id": 7, "end": {...}}  the result
       {"id": 7, "c": {...}, "end": {...}}  a last chunk and the result in one line
       {"id": 7, "err": {"kind": "invalid" | "backend" | "contract", "message": ..., "param": ..., "code": ...}}
       {"id": 8, "stats": {...}}   {"id": 9, "parked": {"bytes": ...}}
       {"op": "heartbeat"}  every HEARTBEAT_INTERVAL_S, from a thread of its own

Each call runs on a thread of its own (threads are reused: starting one per call cost a wake-up on the
short-request path) so cancels and stats are read while a model generates; an adapter that cannot
serve two requests at once serialises them itself. When the server goes away the socket closes and
the worker exits at once.

A call that is not streamed (`"stream": false`) gets its text in as few lines as possible: the
chunks are merged and sent at most every FLUSH_S (so the watchdog still sees progress), the last
of them in the same line as the result.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from backends import codec
from backends.contract import (
    HEARTBEAT_INTERVAL_S,
    TEXT_METHODS,
    Adapter,
    CallMessage,
    Cancel,
    ContractError,
    ErrorCode,
    Handshake,
    HeartbeatMessage,
    InvalidInput,
    LoadErrorMessage,
    Outlet,
    ParkMessage,
    ReadyMessage,
    Reply,
    decode_params,
    merge_text_chunks,
)
from backends.plan import LoadPlan

log = logging.getLogger("modelyard.worker")

FLUSH_S = 0.25  # a non-streamed call's merged text goes out at least this often


class Connection:
    """The worker's end of the socket: whole lines in, whole lines out, writes serialised."""

    def __init__(self, fd: int):
        self._sock = socket.socket(fileno=fd)
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: Reply | ReadyMessage | LoadErrorMessage | HeartbeatMessage) -> None:
        data = codec.encode(message)
        with self._lock:
            self._sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        line = self._reader.readline()
        return codec.decode(line) if line else None


class ThreadPool:
    """Threads kept for the next call: a call hands its work to an idle thread (one wake-up) instead
    of starting a thread (whose start waits for the new thread to be scheduled). Unbounded: a call
    never waits for a thread, as calls may block for long (paused streams, a model's lock)."""

    def __init__(self, name: str):
        self._name = name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn, *args) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._count += 1
                threading.Thread(target=self._serve, name=f"{self._name}-{self._count}", daemon=True).start()
        self._tasks.put((fn, args))

    def _serve(self) -> None:
        while True:
            fn, args = self._tasks.get()
            try:
                fn(*args)
            except Exception:  # a task's own errors are its business; the thread stays
                log.error("task failed: %s", traceback.format_exc())
            with self._lock:
                self._idle += 1


def load_adapter(handshake: Handshake) -> Adapter:
    """The plan's engine, loaded exactly as planned."""
    plan: LoadPlan = _named(handshake["plan_type"]).from_json(handshake["plan"])
    if plan.device == "cpu":  # a CPU plan beside a GPU (the fit ladder's last rung) opens no CUDA context
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return _named(plan.adapter)(plan)


def _named(path: str) -> Any:
    """A class from its "package.module:Class" name."""
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class Worker:
    def __init__(self, conn: Connection, adapter: Adapter):
        self.conn = conn
        self.adapter = adapter
        self.cancels: dict[int, Cancel] = {}
        self.gates: dict[int, threading.Event] = {}  # set: the call may produce; clear: paused
        self.pool = ThreadPool("call")

    def serve(self) -> None:
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        while True:
            message = self.conn.receive()
            if message is None or message.get("op") == "stop":
                return
            op = message.get("op")
            if op == "call":
                cancel, gate = Cancel(), threading.Event()
                gate.set()
                self.cancels[message["id"]] = cancel
                self.gates[message["id"]] = gate
                self.pool.submit(self._run, message, cancel, gate)
            elif op == "cancel":
                cancel = self.cancels.get(message["id"])
                if cancel is not None:
                    cancel.set()
            elif op == "stats":
                self.conn.send({"id": message["id"], "stats": self._stats()})
            elif op == "park":  # in a thread: writing gigabytes must not stall the control channel
                threading.Thread(target=self._park, args=(message,), daemon=True).start()
            elif op == "flow":
                gate = self.gates.get(message["id"])
                if gate is not None and message["paused"]:
                    gate.clear()
                elif gate is not None:
                    gate.set()

    def _send_chunk(self, call_id: int, chunk: dict[str, Any], cancel: Cancel, held: Held) -> None:
        """From the call's thread, or an engine's own (its Outlet)."""
        if cancel or held.keep(chunk):
            return  # after a cancel nobody reads the chunks
        try:
            self.conn.send({"id": call_id, "c": held.take() or chunk})
        except OSError:
            pass  # the server is gone: the main loop sees the socket close and the worker exits

    def _send_end(self, call_id: int, result: dict[str, Any], held: Held) -> None:
        """The result, with the last of a held call's text in the same line."""
        reply: Reply = {"id": call_id, "end": result}
        last = held.take()
        if last is not None:
            reply["c"] = last
        try:
            self.conn.send(reply)
        except OSError:
            pass  # the server is gone: the main loop sees the socket close and the worker exits

    def _park(self, message: ParkMessage) -> None:
        try:
            park = getattr(self.adapter, "park", None)
            if park is None:
                raise ContractError("this engine does not park")
            written = park(Path(message["dest"]))
            self.conn.send({"id": message["id"], "parked": {"bytes": int(written)}})
        except Exception as exc:
            log.error("parking failed: %s", traceback.format_exc())
            self.conn.send({"id": message["id"], "err": {"kind": "backend", "message": f"{type(exc).__name__}: {exc}"}})

    def _heartbeat(self) -> None:
        """Runs beside the engine: silence means the process is stopped or wedged (GIL held)."""
        try:
            while True:
                time.sleep(HEARTBEAT_INTERVAL_S)
                self.conn.send({"op": "heartbeat"})
        except OSError:
            return  # the server went away; the main loop exits too

    def _stats(self) -> dict[str, Any]:
        return {"active": len(self.cancels), "memory_mb": self.adapter.memory_mb(), **self.adapter.stats()}

    def _run(self, message: CallMessage, cancel: Cancel, gate: threading.Event) -> None:
        call_id, method = message["id"], message["method"]
        try:
            params = decode_params(method, message.get("params", {}))
            handler = getattr(self.adapter, method, None)
            if handler is None:
                raise InvalidInput(f"this model does not support {method!r}", param="model",
                                   code=ErrorCode.UNSUPPORTED_CAPABILITY)
            held = Held(method in TEXT_METHODS and not message.get("stream", True))
            if method in TEXT_METHODS:
                cancel.outlet = Outlet(lambda chunk: self._send_chunk(call_id, chunk, cancel, held),
                                       lambda result: self._send_end(call_id, result, held), gate)
            chunks = handler(params, cancel)
            while True:
                while not gate.wait(0.1) and not cancel:
                    pass  # paused: the generator is not advanced, so the engine produces nothing more
                try:
                    chunk = next(chunks)
                except StopIteration as done:
                    if cancel.outlet is None or not cancel.outlet.finished:  # else the engine sent it
                        self._send_end(call_id, done.value or {}, held)
                    return
                self._send_chunk(call_id, chunk, cancel, held)
        except InvalidInput as exc:
            code = exc.code.value if exc.code else None
            self.conn.send({"id": call_id, "err": {"kind": "invalid", "message": exc.message,
                                                   "param": exc.param, "code": code}})
        except ContractError as exc:
            log.error("request %s broke the contract: %s", call_id, exc)
            self.conn.send({"id": call_id, "err": {"kind": "contract", "message": str(exc)}})
        except Exception as exc:  # the engine failed this request; the worker lives on
            log.error("request %s failed: %s", call_id, traceback.format_exc())
            self.conn.send({"id": call_id, "err": {"kind": "backend", "message": f"{type(exc).__name__}: {exc}"}})
        finally:
            self.cancels.pop(call_id, None)
            self.gates.pop(call_id, None)


class Held:
    """A non-streamed text call's chunks, merged, until FLUSH_S has passed since the last send."""

    def __init__(self, holding: bool):
        self.holding = holding
        self._chunks: list[dict[str, Any]] = []
        self._since = time.monotonic()

    def keep(self, chunk: dict[str, Any]) -> bool:
        """Whether `chunk` is held back (else it goes out now, with what was held: take())."""
        if not self.holding:
            return False
        self._chunks.append(chunk)
        return time.monotonic() - self._since < FLUSH_S

    def take(self) -> dict[str, Any] | None:
        self._since = time.monotonic()
        if not self._chunks:
            return None
        merged = merge_text_chunks(self._chunks)
        self._chunks = []
        return merged


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us if the server dies without closing the socket first."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backends.worker_main")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop
    conn = Connection(args.fd)
    handshake = conn.receive()
    if handshake is None:
        return
    try:
        adapter = load_adapter(handshake)
    except Exception as exc:
        log.error("load failed: %s", traceback.format_exc())
        conn.send({"op": "load_error", "message": f"{type(exc).__name__}: {exc}"})
        return
    conn.send({"op": "ready", "memory_mb": adapter.memory_mb(), "pid": os.getpid()})
    Worker(conn, adapter).serve()
    try:
        adapter.close()
    finally:
        sys.stdout.flush()
        os._exit(0)  # threads may sit inside native code; do not wait for them


if __name__ == "__main__":
    main()
