"""The event hub: what the arbiter reports, fanned out to /admin/events streams (the page, `modelyard
events`).

The arbiter reports to one `Events` observer; `Fanout` hands each report to the metrics and to the
hub. The hub keeps a short history of model lifecycle records (a load starting, a swap in, a failed
load, an eviction and whether the model parked) and, whenever anything changed, sends each
subscriber the arbiter's snapshot, coalesced to at most one per `interval_s` however busy the server
is: a page never polls, and a burst of requests costs one snapshot, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from server.arbiter import Events

MAX_SUBSCRIBERS = 64  # open streams; each holds a queue of records and one snapshot
HISTORY = 256  # lifecycle records kept for a new subscriber
LOADS_PER_MODEL = 10  # a model's load history, kept even after the global history has moved on
PENDING = 512  # records a slow subscriber may fall behind by before its oldest are dropped


class Source(Protocol):
    """What the hub reads from the arbiter when it publishes."""

    def snapshot(self) -> dict[str, Any]: ...
    def is_parked(self, model_id: str) -> bool: ...


@dataclass(frozen=True)
class Record:
    """One lifecycle event. `kind`: loading (a load began at `rung`), swapped_in (`source` disk or
    ram, `seconds`), load_failed (`result` failure or timeout), evicted (`reason`, `parked`),
    switched (`reason`: idle or aging; no model)."""

    id: int
    at: float  # wall-clock seconds
    kind: str
    model: str | None
    detail: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(body.pop("detail"))
        return body


class Subscription:
    """One stream's queue: the records since it began and the latest snapshot, if not yet sent."""

    def __init__(self) -> None:
        self.records: deque[Record] = deque(maxlen=PENDING)
        self.snapshot: dict[str, Any] | None = None
        self.closed = False
        self._wake = asyncio.Event()

    def push(self, record: Record | None = None, snapshot: dict[str, Any] | None = None) -> None:
        if record is not None:
            self.records.append(record)
        if snapshot is not None:
            self.snapshot = snapshot  # a newer one supersedes what was not sent yet
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self, timeout_s: float) -> list[tuple[str, Record | dict[str, Any]]] | None:
        """What is due, records first; [] after `timeout_s` of quiet (time for a heartbeat); None
        once the hub closed the stream."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()
        if self.closed:
            return None
        due: list[tuple[str, Record | dict[str, Any]]] = [("record", r) for r in self.records]
        self.records.clear()
        if self.snapshot is not None:
            due.append(("snapshot", self.snapshot))
            self.snapshot = None
        return due


class EventHub:
    """Implements the arbiter's `Events` (through `Fanout`); streams subscribe to it."""

    def __init__(self, *, interval_s: float = 0.1, wall: Callable[[], float] = time.time):
        self.interval_s = interval_s
        self._wall = wall
        self._source: Source | None = None
        self._subscribers: set[Subscription] = set()
        self._history: deque[Record] = deque(maxlen=HISTORY)
        self._loads: dict[str, deque[Record]] = {}  # per registry model: bounded by the registry
        self._ids = itertools.count(1)
        self.epoch = secrets.token_hex(4)  # this hub's, in every event id: a restarted server's ids start again
        self._flush: asyncio.TimerHandle | None = None
        self.snapshots = 0  # published so far (tests and the benchmark read it)
        self.closed = False

    def bind(self, source: Source) -> None:
        self._source = source

    # ---- subscribers ---------------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription | None:
        """A new stream's queue, or None when MAX_SUBSCRIBERS are open or the hub is closed."""
        if self.closed or len(self._subscribers) >= MAX_SUBSCRIBERS:
            return None
        subscription = Subscription()
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every stream (server shutdown: an open page must not hold it for the grace period)."""
        self.closed = True
        for subscription in self._subscribers:
            subscription.close()
        self._subscribers.clear()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def history(self, after_id: int = 0) -> list[Record]:
        """Records newer than `after_id` (a reconnecting stream's Last-Event-ID)."""
        return [r for r in self._history if r.id > after_id]

    def loads(self) -> dict[str, list[Record]]:
        """Each model's recent loads (swapped_in and load_failed records), oldest first."""
        return {model: list(records) for model, records in self._loads.items()}

    def snapshot(self) -> dict[str, Any]:
        """The arbiter's snapshot now, stamped with the server's wall clock (for countdowns)."""
        assert self._source is not None, "the hub is not bound to an arbiter"
        return {**self._source.snapshot(), "at": round(self._wall(), 3)}

    # ---- publishing ----------------------------------------------------------------------------

    def _record(self, kind: str, model: str | None, **detail: Any) -> None:
        record = Record(next(self._ids), round(self._wall(), 3), kind, model, detail)
        self._history.append(record)
        if kind in ("swapped_in", "load_failed") and model is not None:
            self._loads.setdefault(model, deque(maxlen=LOADS_PER_MODEL)).append(record)
        for subscription in self._subscribers:
            subscription.push(record=record)
        self.changed()

    def changed(self) -> None:
        """Something the snapshot shows changed: publish one within `interval_s` (coalesced)."""
        if self._flush is not None or not self._subscribers or self._source is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._flush = loop.call_later(self.interval_s, self._publish)

    def _publish(self) -> None:
        self._flush = None
        if not self._subscribers:
            return
        snapshot = self.snapshot()
        self.snapshots += 1
        for subscription in self._subscribers:
            subscription.push(snapshot=snapshot)

    # ---- the arbiter's events ------------------------------------------------------------------

    def placed(self, model: str, rung: str) -> None:
        self._record("loading", model, rung=rung)

    def loaded(self, model: str, result: str, seconds: float) -> None:
        if result != "success":  # a success is recorded by swapped_in, which says from where
            self._record("load_failed", model, result=result, seconds=round(seconds, 3))

    def swapped_in(self, model: str, source: str, seconds: float) -> None:
        self._record("swapped_in", model, source=source, seconds=round(seconds, 3))

    def evicted(self, model: str, reason: str) -> None:
        parked = self._source is not None and self._source.is_parked(model)
        self._record("evicted", model, reason=reason, parked=parked)

    def switched(self, reason: str) -> None:
        self._record("switched", None, reason=reason)

    def estimated(self, backend: str, ratio: float) -> None: ...

    def waited(self, model: str, seconds: float) -> None:
        self.changed()

    def waited_for(self, model: str, reason: str, seconds: float, swap_s: float) -> None:
        self.changed()

    def memory(self, used_mb: float, budget_mb: float, per_model_mb: dict[str, float]) -> None:
        self.changed()

    def warm(self, parked: int, parked_mb: float) -> None:
        self.changed()

    def queue(self, waiting: int) -> None:
        self.changed()


class Fanout:
    """The arbiter's one `Events` observer, handing every report to each of `observers` in turn."""

    def __init__(self, *observers: Events):
        self._observers = observers

    def __getattr__(self, name: str) -> Callable[..., None]:
        methods = [getattr(observer, name) for observer in self._observers]

        def report(*args: Any, **kwargs: Any) -> None:
            for method in methods:
                method(*args, **kwargs)

        setattr(self, name, report)  # found directly from now on
        return report
