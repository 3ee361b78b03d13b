"""The worker's end of the pipe: the main loop of a model worker process.

Started by the server (server/worker_client.py) as `python -m backends.worker_main --fd N`. It speaks
newline-delimited JSON over the inherited socket N (the shapes are in backends/contract.py). The
first line it reads is the model's LoadPlan and the class to read it as (only that engine's spec
module is imported: a worker starts in a few tens of milliseconds); it loads the plan's adapter, answers `ready` (with the
adapter's own memory account) or `load_error`, then serves:

  in:  {"op": "call", "id": 7, "method": "chat", "params": {...}}
       {"op": "cancel", "id": 7}   {"op": "stats", "id": 8}   {"op": "stop"}
       {"op": "park", "id": 9, "dest": "/dev/shm/..."}   write the warm copy (the server stops us after)
       {"op": "flow", "id": 7, "paused": true}   (the client is not reading: stop producing for now)
  out: {"id": 7, "c": {...}}  one chunk      {"id": 7, "end": {...}}  the result
       {"id": 7, "err": {"kind": "invalid" | "backend" | "contract", "message": ..., "param": ..., "code": ...}}
       {"id": 8, "stats": {...}}   {"id": 9, "parked": {"bytes": ...}}
       {"op": "heartbeat"}  every HEARTBEAT_INTERVAL_S, from a thread of its own

Each call runs in its own thread so cancels and stats are read while a model generates; an adapter
that cannot serve two requests at once serialises them itself. When the server goes away the
socket closes and the worker exits at once.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from backends.contract import (
    HEARTBEAT_INTERVAL_S,
    Adapter,
    CallMessage,
    Cancel,
    ContractError,
    ErrorCode,
    Handshake,
    HeartbeatMessage,
    InvalidInput,
    LoadErrorMessage,
    ParkMessage,
    ReadyMessage,
    Reply,
    decode_params,
)
from backends.plan import LoadPlan

log = logging.getLogger("modelyard.worker")


class Connection:
    """The worker's end of the socket: whole lines in, whole lines out, writes serialised."""

    def __init__(self, fd: int):
        self._sock = socket.socket(fileno=fd)
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: Reply | ReadyMessage | LoadErrorMessage | HeartbeatMessage) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        line = self._reader.readline()
        return json.loads(line) if line else None


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
                threading.Thread(target=self._run, args=(message, cancel, gate), daemon=True).start()
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
            chunks = handler(params, cancel)
            while True:
                while not gate.wait(0.1) and not cancel:
                    pass  # paused: the generator is not advanced, so the engine produces nothing more
                try:
                    chunk = next(chunks)
                except StopIteration as done:
                    self.conn.send({"id": call_id, "end": done.value or {}})
                    return
                if not cancel:  # after a cancel nobody reads the chunks
                    self.conn.send({"id": call_id, "c": chunk})
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
