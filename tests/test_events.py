"""The event hub alone: what it records from the arbiter's events, how it coalesces snapshots, and
how its subscriptions end. A fake source stands in for the arbiter; the loop is real, the wall
clock is a counter."""

from __future__ import annotations

import asyncio
import itertools

from server import events
from server.events import EventHub, Fanout, Record


class Source:
    def __init__(self) -> None:
        self.snapshots = 0
        self.parked: set[str] = set()

    def snapshot(self) -> dict:
        self.snapshots += 1
        return {"n": self.snapshots}

    def is_parked(self, model_id: str) -> bool:
        return model_id in self.parked


def hub(interval_s: float = 0.05) -> tuple[EventHub, Source]:
    wall = itertools.count(1_700_000_000)
    h = EventHub(interval_s=interval_s, wall=lambda: float(next(wall)))
    source = Source()
    h.bind(source)
    return h, source


async def drain(subscription, timeout_s: float = 0.5) -> list:
    due = await subscription.next(timeout_s)
    return [] if due is None else due


def run(test):
    def wrapper():
        asyncio.run(asyncio.wait_for(test(), 10))

    wrapper.__name__ = test.__name__
    return wrapper


@run
async def test_a_burst_of_changes_publishes_one_snapshot():
    h, source = hub()
    subscription = h.subscribe()
    for _ in range(500):
        h.memory(1.0, 2.0, {})
        h.queue(3)
        h.changed()
    await asyncio.sleep(0.15)
    due = await drain(subscription)
    assert [kind for kind, _ in due] == ["snapshot"]
    assert source.snapshots == 1 and h.snapshots == 1
    assert due[0][1]["n"] == 1 and due[0][1]["at"] > 0  # stamped with the wall clock


@run
async def test_nobody_watching_costs_no_snapshot():
    h, source = hub()
    for _ in range(100):
        h.changed()
    await asyncio.sleep(0.1)
    assert source.snapshots == 0


@run
async def test_lifecycle_records_reach_every_subscriber_in_order_with_one_record_per_successful_load():
    h, source = hub()
    first, second = h.subscribe(), h.subscribe()
    h.placed("a", "full")
    h.loaded("a", "success", 0.5)  # recorded by swapped_in, which says from where
    h.swapped_in("a", "disk", 0.5)
    h.placed("b", "context")
    h.loaded("b", "timeout", 9.0)
    source.parked.add("a")
    h.evicted("a", "capacity")
    h.evicted("c", "admin")
    h.switched("aging")
    expected = [("loading", "a", {"rung": "full"}), ("swapped_in", "a", {"source": "disk", "seconds": 0.5}),
                ("loading", "b", {"rung": "context"}), ("load_failed", "b", {"result": "timeout", "seconds": 9.0}),
                ("evicted", "a", {"reason": "capacity", "parked": True}),
                ("evicted", "c", {"reason": "admin", "parked": False}), ("switched", None, {"reason": "aging"})]
    for subscription in (first, second):
        due = await drain(subscription)
        records = [body for kind, body in due if kind == "record"]
        assert [(r.kind, r.model, r.detail) for r in records] == expected
        assert [r.id for r in records] == sorted(r.id for r in records)
    wire = h.history()[1].wire()
    assert wire == {"id": 2, "at": wire["at"], "kind": "swapped_in", "model": "a", "source": "disk", "seconds": 0.5}


@run
async def test_each_model_keeps_its_last_loads_after_the_history_moves_on():
    h, _ = hub()
    for i in range(events.LOADS_PER_MODEL + 5):
        h.swapped_in("a", "ram", float(i))
    for _ in range(events.HISTORY):
        h.switched("idle")
    assert not [r for r in h.history() if r.model == "a"]  # gone from the global history
    loads = h.loads()["a"]
    assert len(loads) == events.LOADS_PER_MODEL and loads[-1].detail["seconds"] == events.LOADS_PER_MODEL + 4


@run
async def test_history_after_an_id_gives_only_the_records_a_reconnecting_stream_missed():
    h, _ = hub()
    for model in "abcd":
        h.placed(model, "full")
    assert [r.model for r in h.history(after_id=2)] == ["c", "d"]
    assert h.history(after_id=99) == []


@run
async def test_a_slow_subscriber_loses_its_oldest_records_and_sees_only_the_latest_snapshot():
    h, _ = hub(interval_s=0.01)
    subscription = h.subscribe()
    for i in range(events.PENDING + 10):
        h.placed(f"m{i}", "full")
    await asyncio.sleep(0.05)
    for _ in range(3):
        h.changed()
        await asyncio.sleep(0.03)
    due = await drain(subscription)
    records = [body for kind, body in due if kind == "record"]
    snapshots = [body for kind, body in due if kind == "snapshot"]
    assert len(records) == events.PENDING and records[0].model == "m10"
    assert len(snapshots) == 1 and snapshots[0]["n"] == h.snapshots


@run
async def test_a_quiet_stream_gets_an_empty_batch_for_its_heartbeat():
    h, _ = hub()
    subscription = h.subscribe()
    assert await subscription.next(0.01) == []


@run
async def test_closing_the_hub_ends_every_stream_and_refuses_new_ones():
    h, _ = hub()
    subscriptions = [h.subscribe() for _ in range(3)]
    waiting = [asyncio.ensure_future(s.next(30)) for s in subscriptions]
    await asyncio.sleep(0)
    h.close()
    assert await asyncio.gather(*waiting) == [None, None, None]
    assert h.subscribe() is None and h.subscribers == 0


@run
async def test_streams_beyond_the_cap_are_refused_until_one_leaves():
    h, _ = hub()
    open_ = [h.subscribe() for _ in range(events.MAX_SUBSCRIBERS)]
    assert all(open_) and h.subscribe() is None
    h.unsubscribe(open_[0])
    assert h.subscribe() is not None


def test_fanout_hands_every_report_to_each_observer_in_turn():
    calls: list[tuple] = []

    class Observer:
        def __init__(self, name: str):
            self.name = name

        def evicted(self, model: str, reason: str) -> None:
            calls.append((self.name, model, reason))

    fanout = Fanout(Observer("metrics"), Observer("hub"))
    fanout.evicted("a", "capacity")
    fanout.evicted("b", "admin")
    assert calls == [("metrics", "a", "capacity"), ("hub", "a", "capacity"), ("metrics", "b", "admin"),
                     ("hub", "b", "admin")]


def test_a_record_on_the_wire_is_flat():
    record = Record(7, 1.5, "evicted", "a", {"reason": "capacity", "parked": False})
    assert record.wire() == {"id": 7, "at": 1.5, "kind": "evicted", "model": "a", "reason": "capacity",
                             "parked": False}
