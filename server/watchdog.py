"""Hung-worker detection: heartbeats, and first-token and inter-token timeouts.

A worker sends a heartbeat every half second from a thread of its own (backends/worker_main.py),
so a worker that is stopped (SIGSTOP), swapped out for good or wedged with the GIL held falls
silent even when idle. An engine stuck in native code that releases the GIL keeps its heartbeat;
the token timeouts catch it: while the worker has text requests to work on, it must produce a
first token within `first_token_s` and then a token every `inter_token_s`.

The token timeouts measure the engine, not a request's wait: a request queued inside the worker
behind others (a busy batch, a held model lock) is not late while the engine produces tokens for
someone; a call paused by backpressure (its client is not reading) is not expected to produce.

`verdict` is the policy, a pure function; `watch` runs it for one worker and kills a hung one
through WorkerProcess.kill_hung, whose exit then takes the arbiter's usual worker-exit path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Timeouts:
    heartbeat_s: float = 20.0
    first_token_s: float = 600.0
    inter_token_s: float = 120.0

    @property
    def tick_s(self) -> float:
        return min(1.0, self.heartbeat_s / 4, self.first_token_s / 4, self.inter_token_s / 4)


@dataclass(frozen=True)
class CallState:
    """One text call in flight, as the watchdog sees it."""

    started: float  # when it was sent to the worker
    produced: bool  # it has had a chunk
    paused: bool  # held back by backpressure: not expected to produce


def verdict(now: float, last_heard: float, last_output: float, calls: Iterable[CallState],
            timeouts: Timeouts) -> str | None:
    """Why the worker counts as hung, or None.

    last_heard: the last line of any kind from the worker (heartbeats included);
    last_output: the last chunk, result or error it sent for any call."""
    silent = now - last_heard
    if silent > timeouts.heartbeat_s:
        return f"no heartbeat for {silent:.0f}s"
    running = [c for c in calls if not c.paused]
    if not running:
        return None
    since = max(last_output, min(c.started for c in running))
    idle = now - since
    if any(c.produced for c in running):
        if idle > timeouts.inter_token_s:
            return f"no token for {idle:.0f}s while generating"
    elif idle > timeouts.first_token_s:
        return f"no first token for {idle:.0f}s"
    return None


class Watched(Protocol):
    """What the watchdog reads of a worker (server/worker_client.py's WorkerProcess)."""

    exited: asyncio.Event
    last_heard: float
    last_output: float

    def text_calls(self) -> list[CallState]: ...
    def kill_hung(self, why: str) -> None: ...


async def watch(worker: Watched, timeouts: Timeouts) -> None:
    """Check the worker every tick until it exits; kill it once it counts as hung."""
    tick = timeouts.tick_s
    last_tick = time.monotonic()
    while not worker.exited.is_set():
        try:
            await asyncio.wait_for(worker.exited.wait(), tick)
            return
        except TimeoutError:
            pass
        now = time.monotonic()
        late = now - last_tick > 2 * tick + 1.0
        last_tick = now
        if late:
            continue  # this process's own loop was held up: the worker's lines may be unread, not unsent
        why = verdict(now, worker.last_heard, worker.last_output, worker.text_calls(), timeouts)
        if why is not None:
            worker.kill_hung(why)
            return
