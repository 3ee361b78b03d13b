"""The connection guard: limits uvicorn's HTTP protocol does not have, applied per connection.

uvicorn times out idle keep-alive connections, but not a connection that never sends a request,
headers that arrive a byte at a time, a body that never finishes, or a client that stops reading
its response; it does not cap header size (httptools buffers a 100 MB header) nor the number of
open connections (at the open-file limit every client fails, /health included). This subclass of
uvicorn's own protocol adds:

  - a header deadline from the first byte of a request (or from accepting the connection): 408;
  - a body deadline from the end of the headers: 408;
  - a header-size cap: 431;
  - a write-stall deadline: a response the client has not read for that long is dropped, which
    ends the request as a disconnect (the generation stops, its lease is released);
  - a connection cap: past it the oldest idle connection (no request in flight) is closed to make
    room, as nginx does with idle keep-alive connections; when none is idle the new one gets 503.

Refusals are written as OpenAI error bodies (server/errors.py); the connection then reads and drops
what the client still sends for a moment, so the client gets to read the answer, and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import resource
import socket
import struct
from dataclasses import dataclass
from typing import Any

from server.errors import (
    HeadersTooLarge,
    ModelyardError,
    RequestTimeout,
    TooManyConnections,
    error_body,
)
from server.settings import Settings

log = logging.getLogger("modelyard.connections")

_REFUSAL_LINGER_S = 1.0  # after a refusal, read and drop what the client still sends, so it sees the answer


def default_max_connections() -> int:
    """Seven eighths of the open-file limit: the rest is for workers' sockets, uploads, model files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(16, soft * 7 // 8)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    write_stall_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(max_connections=settings.max_connections or default_max_connections(),
                   header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
                   max_header_bytes=settings.max_header_bytes,
                   write_stall_timeout_s=settings.write_stall_timeout_s)


def _head_part(tail: bytes, data: bytes) -> int:
    """How many bytes of `data` belong to the headers (all of it if their end is not in it)."""
    joined = tail + data
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := joined.find(mark)) >= 0]
    return min(ends) - len(tail) if ends else len(data)


class ConnectionTable:
    """One server's open connections; the idle ones (no request in flight) oldest first."""

    def __init__(self) -> None:
        self.open = 0
        self.idle: dict[Any, None] = {}  # insertion-ordered: the first key is the longest idle

    def oldest_idle(self):
        return next(iter(self.idle), None)


def refusal(error: ModelyardError) -> bytes:
    """A complete HTTP/1.1 response carrying the error's OpenAI body; it closes the connection."""
    body = json.dumps(error_body(error), separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in error.headers().items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def guarded_protocol(limits: ConnectionLimits, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class (httptools or h11, as uvicorn would pick) with the limits applied.

    One class per server: its connections share one table."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol

        base = AutoHTTPProtocol
    table = ConnectionTable()

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        # phases: "head" (no request in flight: waiting for one, or reading its headers),
        # "body" (reading a request body), "serving" (the app has the request), "refusing"
        def connection_made(self, transport) -> None:
            self._phase = "head"
            self._head_bytes = 0
            self._tail = b""  # the last bytes of the headers so far: their end may span two reads
            self._timer: asyncio.TimerHandle | None = None
            self._stall: asyncio.TimerHandle | None = None
            self._counted = True
            super().connection_made(transport)
            table.open += 1
            if table.open > limits.max_connections:
                victim = table.oldest_idle()
                if victim is None:
                    log.warning("connection limit (%d) reached with every connection busy: refusing one",
                                limits.max_connections)
                    self._refuse(TooManyConnections(
                        f"the server has {limits.max_connections} connections open; retry shortly"))
                    return
                victim._evict()
            table.idle[self] = None
            self._arm(limits.header_timeout_s, self._head_timeout)

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None
            table.idle.pop(self, None)
            if self._counted:
                self._counted = False
                table.open -= 1
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._phase == "refusing":
                return  # read and dropped: the client gets to finish sending and read the refusal
            if self._phase == "head" and not self._body_pending():
                # Measured before the parser sees the bytes: httptools would buffer any size.
                if self._head_bytes + _head_part(self._tail, data) > limits.max_header_bytes:
                    self._refuse(HeadersTooLarge(f"request headers exceed the {limits.max_header_bytes}-byte limit"))
                    return
                self._head_bytes += len(data)
                self._tail = (self._tail + data)[-3:]
                if self._timer is None:
                    self._arm(limits.header_timeout_s, self._head_timeout)
            cycle = self.cycle
            super().data_received(data)
            if self.transport.is_closing():
                return  # uvicorn answered a malformed request itself
            if self.cycle is not cycle:
                self._request_started()
            if self._phase == "body" and not self.cycle.more_body:
                self._disarm()
                self._phase = "serving"

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._phase == "refusing" or self.transport.is_closing():
                return
            self._disarm()
            self._phase, self._head_bytes, self._tail = "head", 0, b""
            table.idle[self] = None  # the keep-alive timer (uvicorn's) now runs; the header one starts with data

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall is None:
                self._stall = self.loop.call_later(limits.write_stall_timeout_s, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        # ---- state changes ---------------------------------------------------------------------

        def _body_pending(self) -> bool:
            """A request whose response went out early (a 413) may still be sending its body."""
            return self.cycle is not None and self.cycle.more_body

        def _request_started(self) -> None:
            table.idle.pop(self, None)
            self._disarm()
            self._head_bytes, self._tail = 0, b""
            if self.cycle.more_body:
                self._phase = "body"
                self._arm(limits.body_timeout_s, self._body_timeout)
            else:
                self._phase = "serving"

        def _arm(self, seconds: float, callback) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _head_timeout(self) -> None:
            self._timer = None
            if self._phase != "head":
                return
            if self._head_bytes:
                self._refuse(RequestTimeout(f"request headers did not arrive within {limits.header_timeout_s:g}s"))
            else:
                self.transport.close()  # a connection that never asked for anything

        def _body_timeout(self) -> None:
            self._timer = None
            if self._phase != "body":
                return
            if self.cycle is not None and not self.cycle.response_started:
                self._refuse(RequestTimeout(f"the request body did not arrive within {limits.body_timeout_s:g}s"))
            else:
                self.transport.close()

        def _stalled(self) -> None:
            self._stall = None
            log.warning("dropping a connection whose client read nothing for %gs", limits.write_stall_timeout_s)
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError, TypeError):
                # A reset, not a close: the kernel would otherwise keep the unread megabytes for minutes
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()  # close() would wait for the unread buffer to drain

        def _evict(self) -> None:
            table.idle.pop(self, None)
            if self._counted:  # its slot is free now, not once the close completes
                self._counted = False
                table.open -= 1
            self.transport.close()

        def _refuse(self, error: ModelyardError) -> None:
            self._phase = "refusing"
            table.idle[self] = None  # lingering only as a courtesy: the first to go when room is needed
            self._disarm()
            self.transport.write(refusal(error))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self._timer = self.loop.call_later(_REFUSAL_LINGER_S, self.transport.abort)
            else:
                self.transport.close()

        def eof_received(self):
            if self._phase == "refusing":
                self.transport.close()
                return None
            return super().eof_received()

    return GuardedProtocol

