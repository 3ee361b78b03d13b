"""The arbiter's orchestration, one test per behaviour, with no processes, no HTTP and no sleeps.

A fake worker factory, memory probe, warm store and clock go in through the constructor (as in
Ollama's sched_test.go): loads finish when a test says so, time moves when a test advances it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.fake.spec import FakeOptions, FakeSpec
from backends.plan import MIB, Device, LoadPlan
from backends.spec import FOREVER
from server.arbiter import Arbiter, NoEvents, State
from server.errors import ModelLoadFailed, ModelLoadTimeout, ModelTooLarge, QueueFull, QueueTimeout, ShuttingDown
from server.warm import WarmCopy

# ---- fakes ---------------------------------------------------------------------------------------


class FakeClock:
    """Time that moves only when advanced; timers fire in due order as it passes them."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self._timers: list[tuple[float, int, FakeClock.Handle]] = []
        self._order = itertools.count()

    class Handle:
        def __init__(self, callback: Callable[[], None]):
            self.callback = callback
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def now(self) -> float:
        return self.now_s

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeClock.Handle:
        handle = FakeClock.Handle(callback)
        heapq.heappush(self._timers, (self.now_s + delay, next(self._order), handle))
        return handle

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time (for fake loads and request bodies)."""
        done = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: done.done() or done.set_result(None))
        await done

    async def advance(self, seconds: float) -> None:
        target = self.now_s + seconds
        while self._timers and self._timers[0][0] <= target:
            due, _, handle = heapq.heappop(self._timers)
            self.now_s = due
            if not handle.cancelled:
                handle.callback()
            await settle()
        self.now_s = target
        await settle()


class FakeWorker:
    _pids = itertools.count(100)

    def __init__(self, plan: LoadPlan, reported_mb: float):
        self.plan = plan
        self.pid = next(self._pids)
        self.reported_mb = reported_mb
        self.stopped = False
        self._on_exit: list[Callable] = []

    def on_exit(self, callback: Callable) -> None:
        self._on_exit.append(callback)

    async def stop(self) -> None:
        self.stopped = True

    def crash(self) -> None:
        for callback in self._on_exit:
            callback(self)


class FakeFactory:
    """Starts FakeWorkers; a model's load can be held at a gate, take clock time, fail, or never finish."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.started: list[str] = []
        self.sources: list[tuple[str, str]] = []  # (model, "disk" | "ram") per start
        self.plans: dict[str, LoadPlan] = {}  # the last plan each model started with
        self.workers: dict[str, FakeWorker] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.failing_from_ram: set[str] = set()
        self.hanging: set[str] = set()
        self.load_s: dict[str, float] = {}  # clock time a load takes
        self.reports: dict[str, float] = {}  # what a worker reports, when not its plan's memory_mb

    def hold(self, model: str) -> asyncio.Event:
        self.gates[model] = asyncio.Event()
        return self.gates[model]

    async def start(self, plan: LoadPlan) -> FakeWorker:
        model = plan.model_id
        self.started.append(model)
        self.sources.append((model, plan.source))
        self.plans[model] = plan
        if self.clock is not None and self.load_s.get(model):
            await self.clock.sleep(self.load_s[model] / (4 if plan.source == "ram" else 1))
        if model in self.gates:
            await self.gates[model].wait()
        if model in self.hanging:
            await asyncio.Event().wait()
        if model in self.failing or (plan.source == "ram" and model in self.failing_from_ram):
            raise RuntimeError("weights unreadable")
        worker = FakeWorker(plan, self.reports.get(model, plan.estimate().model_mb))
        self.workers[model] = worker
        return worker


class FakeProbe:
    def measure(self, pid: int, reported_mb: float) -> float:
        return reported_mb

    async def wait_released(self, pid: int, timeout_s: float) -> bool:
        return True


class FakeWarm:
    """The warm tier without RAM: parks are bookkept at the plan's size; staleness and failures on demand."""

    def __init__(self) -> None:
        self.parks: list[str] = []
        self.dropped: list[str] = []
        self.stale: set[str] = set()
        self.failing: set[str] = set()
        self.closed = False

    def fingerprint(self, spec) -> tuple:
        return (spec.id,)

    def fresh(self, copy: WarmCopy, spec) -> bool:
        return spec.id not in self.stale

    async def park(self, model_id: str, plan: LoadPlan, worker, fingerprint: tuple) -> WarmCopy:
        if model_id in self.failing:
            raise RuntimeError("no room on tmpfs")
        self.parks.append(model_id)
        return WarmCopy(model_id, plan.from_warm(Path("/warm") / model_id), int(plan.warm_mb() * MIB), "tmpfs",
                        fingerprint)

    def drop(self, copy: WarmCopy) -> None:
        self.dropped.append(copy.model_id)

    def close(self) -> None:
        self.closed = True


class Recorder(NoEvents):
    """The events the arbiter reports, kept for assertions."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, str, float]] = []
        self.swaps: list[tuple[str, str]] = []
        self.switch_reasons: list[str] = []

    def waited_for(self, model: str, reason: str, seconds: float, swap_s: float) -> None:
        self.waits.append((model, reason, seconds))

    def swapped_in(self, model: str, source: str, seconds: float) -> None:
        self.swaps.append((model, source))

    def switched(self, reason: str) -> None:
        self.switch_reasons.append(reason)


def model(name: str, mb: int = 300, **fields) -> FakeSpec:
    options = {k: fields.pop(k) for k in list(fields) if k in FakeOptions.model_fields}
    return FakeSpec(id=name, backend="fake", options=FakeOptions(memory_mb=mb, **options), **fields)


async def settle(rounds: int = 30) -> None:
    """Let every task that can run, run (fake loads and unloads finish within a few steps)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Bench:
    def __init__(self, budget_mb: float = 1000, *, ram_mb: float = 0, **kwargs):
        self.clock = FakeClock()
        self.factory = FakeFactory(self.clock)
        self.warm = FakeWarm()
        self.events = Recorder()
        warm = {"warm": self.warm, "ram_budget_mb": ram_mb} if ram_mb else {}
        self.arbiter = Arbiter(budget_mb, self.factory, FakeProbe(), clock=self.clock, events=self.events,
                               **warm, **kwargs)

    def resident(self, name: str) -> dict | None:
        return next((r for r in self.arbiter.snapshot()["residents"] if r["model"] == name), None)

    def residents(self) -> set[str]:
        return {r["model"] for r in self.arbiter.snapshot()["residents"]}

    def parked(self) -> set[str]:
        return {p["model"] for p in self.arbiter.snapshot()["parked"]}

    async def use(self, spec: FakeSpec, **kwargs) -> None:
        """One request: lease, release."""
        (await self.arbiter.acquire(spec, **kwargs)).release()
        await settle()

    async def until(self, work, step: float = 0.5):
        """Await `work` while moving the clock (a load that takes clock time)."""
        task = asyncio.ensure_future(work)
        while not task.done():
            await self.clock.advance(step)
        return await task


def scenario(test: Callable) -> Callable:
    """Run an async test on a fresh event loop, bounded so a wedged arbiter fails instead of hanging."""

    def run() -> None:
        async def bounded() -> None:
            await asyncio.wait_for(test(), 10)

        asyncio.run(bounded())

    run.__name__ = test.__name__
    return run


# ---- leases and loading ----------------------------------------------------------------------------


@scenario
async def test_concurrent_first_requests_cause_exactly_one_load():
    bench = Bench()
    a = model("a")
    gate = bench.factory.hold("a")
    waiters = [asyncio.create_task(bench.arbiter.acquire(a)) for _ in range(10)]
    await settle()
    assert bench.arbiter.waiting == 10 and bench.factory.started == ["a"]
    gate.set()
    leases = await asyncio.gather(*waiters)
    assert bench.factory.started == ["a"] and bench.arbiter.loads == 1
    assert bench.resident("a")["refcount"] == 10
    for lease in leases:
        lease.release()


@scenario
async def test_resident_model_is_leased_at_once():
    bench = Bench()
    a = model("a")
    await bench.use(a)
    lease = await bench.arbiter.acquire(a)
    assert lease.waited_s == 0.0 and bench.factory.started == ["a"]
    lease.release()


@scenario
async def test_model_larger_than_the_budget_is_refused_and_evicts_nothing():
    bench = Bench(budget_mb=1000)
    await bench.use(model("small"))
    with pytest.raises(ModelTooLarge):
        await bench.arbiter.acquire(model("huge", 5000))
    assert bench.residents() == {"small"} and bench.factory.started == ["small"]


@scenario
async def test_estimate_never_falls_below_a_measured_load():
    bench = Bench()
    heavy = model("heavy", 100)
    bench.factory.reports["heavy"] = 300
    await bench.use(heavy)
    assert bench.resident("heavy")["memory_mb"] == 300
    assert bench.arbiter.estimate_mb(heavy) == 300


# ---- eviction ------------------------------------------------------------------------------------


@scenario
async def test_idle_models_are_evicted_shortest_keep_alive_first_then_least_recently_used():
    bench = Bench(budget_mb=900)
    short, old, recent, new = model("short", keep_alive=10), model("old"), model("recent"), model("new")
    for spec in (old, recent, short):
        await bench.use(spec)
        await bench.clock.advance(1)
    await bench.use(new)
    assert bench.residents() == {"old", "recent", "new"}
    await bench.use(short)  # "old" is now the least recently used of the 5-minute models
    assert bench.residents() == {"recent", "new", "short"}
    assert bench.arbiter.evictions == {"capacity": 2}


# With no aging allowance (max_wait_s=0) a waiter has a busy model in its way drained at once:
# the mechanics of draining, which admission otherwise defers (see the admission tests below).


@scenario
async def test_busy_victim_drains_and_the_waiter_loads_after_its_lease_ends():
    bench = Bench(budget_mb=1000, max_wait_s=0)
    slow, other = model("slow", 600), model("other", 600)
    lease = await bench.arbiter.acquire(slow)
    waiter = asyncio.create_task(bench.arbiter.acquire(other))
    await settle()
    assert bench.resident("slow")["state"] == "draining"
    assert bench.resident("other") is None and not waiter.done()  # never evicted under its lease
    lease.release()
    (await waiter).release()
    assert bench.residents() == {"other"}
    assert bench.arbiter.evictions == {"drained": 1} and bench.arbiter.peak_mb <= 1000


@scenario
async def test_draining_model_takes_no_new_leases():
    bench = Bench(budget_mb=1000, max_wait_s=0)
    slow, other = model("slow", 600), model("other", 600)
    lease = await bench.arbiter.acquire(slow)
    other_waiter = asyncio.create_task(bench.arbiter.acquire(other))
    await settle()
    again = asyncio.create_task(bench.arbiter.acquire(slow))
    await settle()
    assert bench.resident("slow")["refcount"] == 1 and not again.done()
    lease.release()
    (await other_waiter).release()  # "other" loads first; "slow" comes back once it is idle
    (await again).release()
    assert bench.factory.started == ["slow", "other", "slow"]


@scenario
async def test_a_model_its_waiters_are_loading_is_not_evicted_before_they_lease_it():
    bench = Bench(budget_mb=1000, max_wait_s=0)
    a, b = model("a", 600), model("b", 600)
    gate = bench.factory.hold("a")
    a_waiter = asyncio.create_task(bench.arbiter.acquire(a))
    await settle()
    b_waiter = asyncio.create_task(bench.arbiter.acquire(b))  # needs a's room; waits for a's load
    await settle()
    gate.set()
    lease = await a_waiter
    assert bench.arbiter.evictions == {} and not bench.factory.workers["a"].stopped
    assert lease.resident.state is State.DRAINING  # b now waits for this lease to end
    assert not b_waiter.done()
    lease.release()
    (await b_waiter).release()
    assert bench.arbiter.evictions == {"drained": 1}


@scenario
async def test_a_load_measured_over_its_estimate_evicts_idle_models_back_under_budget():
    bench = Bench(budget_mb=1000)
    bench.factory.reports["big"] = 700  # estimated at 400
    await bench.use(model("idle", 400))
    await bench.use(model("big", 400))
    assert bench.residents() == {"big"}
    assert bench.arbiter.evictions == {"over_budget": 1}


@scenario
async def test_pinned_model_is_never_evicted():
    bench = Bench(budget_mb=1000)
    pinned = model("pinned", 500, pinned=True)
    for spec in (pinned, model("a", 400), model("b", 400), model("a", 400)):
        await bench.use(spec)
    assert bench.residents() == {"pinned", "a"}
    assert bench.resident("pinned")["expires_in_s"] is None
    with pytest.raises(ModelTooLarge, match="pinned"):
        await bench.arbiter.acquire(model("c", 600))


# ---- keep-alive ----------------------------------------------------------------------------------


@scenario
async def test_model_keep_alive_expires_an_idle_model():
    bench = Bench()
    await bench.use(model("a", keep_alive=60))
    await bench.clock.advance(59)
    assert bench.resident("a")["expires_in_s"] == 1
    await bench.clock.advance(1)
    assert bench.resident("a") is None and bench.arbiter.evictions == {"keep_alive": 1}


@scenario
async def test_a_lease_restarts_the_keep_alive():
    bench = Bench()
    a = model("a", keep_alive=60)
    await bench.use(a)
    await bench.clock.advance(50)
    await bench.use(a)
    await bench.clock.advance(50)
    assert bench.resident("a") is not None
    await bench.clock.advance(10)
    assert bench.resident("a") is None


@scenario
async def test_request_keep_alive_forever_overrides_the_models():
    bench = Bench()
    await bench.use(model("a", keep_alive=1), keep_alive_s=FOREVER)
    await bench.clock.advance(10**6)
    assert bench.resident("a")["expires_in_s"] is None and bench.resident("a")["keep_alive_s"] == -1


@scenario
async def test_keep_alive_zero_unloads_on_release():
    bench = Bench()
    await bench.use(model("a"), keep_alive_s=0)
    assert bench.resident("a") is None and bench.arbiter.evictions == {"keep_alive": 1}


# ---- failures and bounds -------------------------------------------------------------------------


@scenario
async def test_load_failure_reaches_every_waiter_and_the_next_request_tries_again():
    bench = Bench()
    a = model("a")
    bench.factory.failing.add("a")
    gate = bench.factory.hold("a")
    waiters = [asyncio.create_task(bench.arbiter.acquire(a)) for _ in range(3)]
    await settle()
    gate.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(o, ModelLoadFailed) and "weights unreadable" in o.message for o in outcomes)
    assert bench.residents() == set() and bench.arbiter.used_mb == 0
    bench.factory.failing.clear()
    await bench.use(a)
    assert bench.factory.started == ["a", "a"]


@scenario
async def test_load_timeout_fails_the_request_and_frees_the_slot():
    bench = Bench(load_timeout_s=30)
    bench.factory.hanging.add("stuck")
    waiter = asyncio.create_task(bench.arbiter.acquire(model("stuck")))
    await settle()
    await bench.clock.advance(30)
    with pytest.raises(ModelLoadTimeout):
        await waiter
    assert bench.resident("stuck") is None and bench.arbiter.loading() is None
    await bench.use(model("fine"))
    assert bench.residents() == {"fine"}


@scenario
async def test_full_queue_is_refused_with_a_retry_hint():
    bench = Bench(max_queue=2)
    bench.factory.hold("slow")
    waiters = [asyncio.create_task(bench.arbiter.acquire(model("slow"))) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull) as refused:
        await bench.arbiter.acquire(model("slow"))
    assert refused.value.retry_after_s >= 1
    for waiter in waiters:
        waiter.cancel()


@scenario
async def test_a_waiter_gives_up_after_the_queue_timeout():
    bench = Bench(queue_timeout_s=10, load_timeout_s=100)
    gate = bench.factory.hold("slow")
    waiter = asyncio.create_task(bench.arbiter.acquire(model("slow")))
    await settle()
    await bench.clock.advance(10)
    with pytest.raises(QueueTimeout):
        await waiter
    assert bench.arbiter.waiting == 0
    gate.set()
    await settle()
    assert bench.resident("slow")["state"] == "ready"  # the load itself went on


@scenario
async def test_a_waiter_that_is_cancelled_leaves_the_queue():
    bench = Bench()
    bench.factory.hold("slow")
    waiter = asyncio.create_task(bench.arbiter.acquire(model("slow")))
    await settle()
    waiter.cancel()
    await settle()
    assert bench.arbiter.waiting == 0


@scenario
async def test_crashed_worker_is_forgotten_and_started_again_on_the_next_request():
    bench = Bench()
    a = model("a")
    await bench.use(a)
    bench.factory.workers["a"].crash()
    await settle()
    assert bench.resident("a") is None and bench.arbiter.evictions == {"crashed": 1}
    await bench.use(a)
    assert bench.factory.started == ["a", "a"]


# ---- admin and shutdown --------------------------------------------------------------------------


@scenario
async def test_admin_unload_of_a_busy_model_waits_for_its_last_lease():
    bench = Bench()
    a = model("a")
    lease = await bench.arbiter.acquire(a)
    assert await bench.arbiter.unload("a")
    assert bench.resident("a")["state"] == "draining"
    lease.release()
    await settle()
    assert bench.resident("a") is None and bench.arbiter.evictions == {"admin": 1}
    assert not await bench.arbiter.unload("a")  # no longer resident


@scenario
async def test_shutdown_stops_every_worker_and_refuses_new_leases():
    bench = Bench()
    await bench.use(model("a"))
    await bench.use(model("b"))
    await bench.arbiter.close()
    assert all(w.stopped for w in bench.factory.workers.values()) and bench.residents() == set()
    with pytest.raises(ShuttingDown):
        await bench.arbiter.acquire(model("a"))


# ---- the warm tier -------------------------------------------------------------------------------


async def with_a_parked() -> tuple[Bench, FakeSpec]:
    """A bench where "a" was evicted by "b" and waits in the warm tier."""
    bench = Bench(budget_mb=1000, ram_mb=2000)
    a = model("a", 600)
    await bench.use(a)
    await bench.use(model("b", 600))
    return bench, a


@scenario
async def test_an_evicted_idle_model_parks_and_its_next_request_loads_from_ram():
    bench, a = await with_a_parked()  # a was evicted for room: parked, not dropped
    assert bench.residents() == {"b"} and bench.parked() == {"a"}
    assert bench.arbiter.evictions == {"capacity": 1}
    await bench.use(a)
    assert bench.factory.sources == [("a", "disk"), ("b", "disk"), ("a", "ram")]
    assert bench.factory.plans["a"].warm_path == "/warm/a"  # the worker was given the parked copy
    assert bench.resident("a")["source"] == "ram" and bench.parked() == {"b"}
    assert ("a", "ram") in bench.events.swaps


@scenario
async def test_a_model_resumed_from_ram_keeps_its_copy_so_its_next_eviction_writes_nothing():
    bench = Bench(budget_mb=1000, ram_mb=2000)
    a, b = model("a", 600), model("b", 600)
    for spec in (a, b, a, b, a):
        await bench.use(spec)
    assert bench.warm.parks == ["a", "b"]  # each written once
    assert bench.resident("a")["warm_mb"] == 600 and bench.parked() == {"b"}


@scenario
async def test_parked_models_are_dropped_least_recently_used_when_the_ram_budget_is_exceeded():
    bench = Bench(budget_mb=700, ram_mb=1300)
    for name in ("a", "b", "c", "d"):
        await bench.use(model(name, 600))
        await bench.clock.advance(1)
    assert bench.parked() == {"b", "c"} and bench.warm.dropped == ["a"]
    assert bench.arbiter.snapshot()["parked_mb"] <= 1300


@scenario
async def test_a_model_larger_than_the_ram_budget_is_dropped_not_parked():
    bench = Bench(budget_mb=1000, ram_mb=500)
    await bench.use(model("a", 600))
    await bench.use(model("b", 600))
    assert bench.parked() == set() and bench.warm.parks == []


@scenario
async def test_keep_alive_expiry_parks_the_model_off_the_device():
    bench = Bench(ram_mb=2000)
    a = model("a", keep_alive=60)
    await bench.use(a)
    await bench.clock.advance(60)
    assert bench.residents() == set() and bench.parked() == {"a"} and bench.arbiter.used_mb == 0
    await bench.use(a)
    assert bench.factory.sources[-1] == ("a", "ram")


@scenario
async def test_admin_unload_drops_the_parked_copy_too():
    bench = Bench(budget_mb=1000, ram_mb=2000)
    await bench.use(model("a", 600))
    await bench.use(model("b", 600))
    assert await bench.arbiter.unload("a")  # parked only
    assert await bench.arbiter.unload("b")  # resident: unloaded, not parked
    assert bench.parked() == set() and bench.residents() == set() and bench.warm.dropped == ["a"]
    assert not await bench.arbiter.unload("a")


@scenario
async def test_a_parked_copy_whose_files_changed_is_dropped_and_the_model_loads_from_disk():
    bench, a = await with_a_parked()
    bench.warm.stale.add("a")
    await bench.use(a)
    assert bench.factory.sources[-1] == ("a", "disk") and bench.warm.dropped == ["a"]


@scenario
async def test_a_parked_copy_that_will_not_load_falls_back_to_the_disk():
    bench, a = await with_a_parked()
    bench.factory.failing_from_ram.add("a")
    await bench.use(a)
    assert bench.factory.sources[-2:] == [("a", "ram"), ("a", "disk")]
    assert bench.resident("a")["source"] == "disk" and "a" in bench.warm.dropped


@scenario
async def test_a_failed_park_drops_the_model_and_still_frees_the_device():
    bench = Bench(budget_mb=1000, ram_mb=2000)
    bench.warm.failing.add("a")
    await bench.use(model("a", 600))
    await bench.use(model("b", 600))
    assert bench.residents() == {"b"} and bench.parked() == set() and bench.arbiter.peak_mb <= 1000


@scenario
async def test_shutdown_drops_every_parked_copy():
    bench = Bench(budget_mb=1000, ram_mb=2000)
    await bench.use(model("a", 600))
    await bench.use(model("b", 600))
    await bench.arbiter.close()
    assert bench.warm.dropped == ["a"] and bench.warm.closed and bench.warm.parks == ["a"]  # b is not parked


# ---- admission: serve the resident model's queue, switch by work, bounded by aging -------------------


async def hold_lease(bench: Bench, spec: FakeSpec, seconds: float) -> None:
    """One request that keeps its model busy for `seconds` of clock time."""
    lease = await bench.arbiter.acquire(spec)
    await bench.clock.sleep(seconds)
    lease.release()


@scenario
async def test_a_b_a_b_arrivals_make_one_switch_not_four():
    bench = Bench(budget_mb=1000, max_wait_s=60)
    a, b = model("a", 600), model("b", 600)
    await bench.use(a)
    requests = []
    for spec in (a, b, a, b, a, b):  # arriving one second apart while a is serving
        requests.append(asyncio.create_task(hold_lease(bench, spec, 5)))
        await bench.clock.advance(1)
    await bench.clock.advance(20)
    await asyncio.gather(*requests)
    assert bench.factory.started == ["a", "b"]  # a served its queue, then one switch to b
    assert bench.arbiter.switches == {"idle": 1}


@scenario
async def test_arrival_order_without_an_aging_allowance_switches_on_every_model_change():
    bench = Bench(budget_mb=1000, max_wait_s=0)
    a, b = model("a", 600), model("b", 600)
    await bench.use(a)
    requests = []
    for spec in (a, b, a, b):
        requests.append(asyncio.create_task(hold_lease(bench, spec, 5)))
        await bench.clock.advance(6)  # each request done before the next arrives
    await bench.clock.advance(10)
    await asyncio.gather(*requests)
    assert bench.factory.started == ["a", "b", "a", "b"]


@scenario
async def test_a_lone_old_waiter_is_served_within_the_aging_bound_even_while_the_resident_stays_busy():
    bench = Bench(budget_mb=1000, max_wait_s=30)
    a, b = model("a", 600), model("b", 600)
    bench.factory.load_s["b"] = 2
    await bench.until(bench.use(b))  # b's load time is known to the arbiter
    await bench.use(a)
    stop = False

    async def busy_a() -> None:  # a request every second, each 3 s long: a is never idle
        running = []
        while not stop:
            running.append(asyncio.create_task(hold_lease(bench, a, 3)))
            await bench.clock.sleep(1)
        await asyncio.gather(*running, return_exceptions=True)

    traffic = asyncio.create_task(busy_a())
    await bench.clock.advance(10)  # a's lease times are now known to the arbiter
    arrived = bench.clock.now()
    (await bench.until(bench.arbiter.acquire(b))).release()
    waited = bench.clock.now() - arrived
    stop = True
    for _ in range(10):
        await bench.clock.advance(5)
    traffic.cancel()
    assert waited <= 30
    assert waited >= 20  # a kept serving its own queue until the bound called for the switch
    assert bench.arbiter.switches["aging"] == 1 and bench.arbiter.evictions.get("drained") == 1


@scenario
async def test_the_model_with_the_most_waiting_requests_goes_next():
    bench = Bench(budget_mb=1000, max_wait_s=600)
    a, b, c = model("a", 600), model("b", 600), model("c", 600)
    lease = await bench.arbiter.acquire(a)
    b_waiter = asyncio.create_task(bench.arbiter.acquire(b))  # b arrived first...
    await bench.clock.advance(1)
    c_waiters = [asyncio.create_task(bench.arbiter.acquire(c)) for _ in range(3)]  # ...c has more work
    await bench.clock.advance(1)
    assert bench.factory.started == ["a"]  # both defer to a's request
    lease.release()
    for waiter in c_waiters:
        (await waiter).release()
    (await b_waiter).release()
    assert bench.factory.started == ["a", "c", "b"]


@scenario
async def test_a_model_that_fits_beside_the_busy_one_loads_at_once():
    bench = Bench(budget_mb=1000, max_wait_s=600)
    lease = await bench.arbiter.acquire(model("a", 600))
    (await bench.arbiter.acquire(model("small", 300))).release()
    assert bench.residents() == {"a", "small"} and bench.arbiter.switches == {}
    lease.release()


@scenario
async def test_a_request_deferred_to_another_models_work_reports_queue_as_its_wait_reason():
    bench = Bench(budget_mb=1000, max_wait_s=600)
    a, b = model("a", 600), model("b", 600)
    lease = await bench.arbiter.acquire(a)
    waiter = asyncio.create_task(bench.arbiter.acquire(b))
    await settle()
    await bench.clock.advance(4)
    lease.release()
    (await waiter).release()
    assert ("b", "queue", 4.0) in bench.events.waits and ("a", "load", 0.0) in bench.events.waits


# ---- the fit ladder ----------------------------------------------------------------------------------


@scenario
async def test_a_model_too_large_at_its_context_loads_at_the_largest_smaller_one_that_fits():
    bench = Bench(budget_mb=1000)
    long = model("long", 200, kv_mb_per_1k=100, context_length=16384, fit=("context",), min_context=1024)
    lease = await bench.arbiter.acquire(long)  # 200 + 1638 MiB of KV as configured
    context = bench.factory.plans["long"].context_length
    assert 1024 <= context < 16384 and 200 + context / 10 <= 1000 and 200 + (context + 256) / 10 > 1000
    assert lease.placement == f"context; n_ctx={context}" == bench.resident("long")["placement"]
    lease.release()


@scenario
async def test_a_model_no_rung_fits_is_refused_naming_what_the_ladder_tried():
    bench = Bench(budget_mb=1000)
    huge = model("huge", 1200, kv_mb_per_1k=100, context_length=8192, fit=("context",), min_context=2048)
    with pytest.raises(ModelTooLarge, match=r"the fit ladder tried context; n_ctx=2048 1405 MiB"):
        await bench.arbiter.acquire(huge)
    assert bench.factory.started == []


@scenario
async def test_beside_a_gpu_the_cpu_rung_loads_the_model_off_the_device_budget():
    bench = Bench(budget_mb=1000, device=Device(kind="cuda", runtime_mb=300))
    big = model("big", 2000, fit=("cpu",))
    lease = await bench.arbiter.acquire(big)
    assert bench.factory.plans["big"].device == "cpu" and lease.placement == "cpu"
    assert bench.arbiter.used_mb == 0 and bench.resident("big")["host_mb"] == 2000
    lease.release()


# ---- the dry-run plan --------------------------------------------------------------------------------


@scenario
async def test_the_dry_run_reports_the_eviction_a_request_would_cause_and_changes_nothing():
    bench = Bench(budget_mb=1000, ram_mb=2000)
    a, b = model("a", 600), model("b", 600)
    await bench.use(a)
    report = bench.arbiter.dry_run(b)
    assert report["verdict"] == "evict" and report["evict"] == ["a"] and report["park"] == ["a"]
    assert report["fits_now"] is False and report["placement"] == "full" and report["need_mb"] == 600
    assert report["admission"]["action"] == "load" and report["expected_wait_s"] > 0
    assert bench.residents() == {"a"} and bench.factory.started == ["a"]  # nothing happened
    await bench.use(b)  # what the plan said is what the arbiter does
    assert bench.parked() == {"a"} and bench.arbiter.evictions == {"capacity": 1}


@scenario
async def test_the_dry_run_of_a_model_behind_a_busy_one_says_it_waits_for_that_models_work():
    bench = Bench(budget_mb=1000, max_wait_s=60)
    a, b = model("a", 600), model("b", 600)
    lease = await bench.arbiter.acquire(a)
    report = bench.arbiter.dry_run(b)
    assert report["verdict"] == "drain" and report["admission"]["action"] == "hold"
    assert report["admission"]["held"] == ["b"] and 0 < report["admission"]["wake_in_s"] <= 60
    assert bench.resident("a")["state"] == "ready"  # nothing drained by asking
    lease.release()


@scenario
async def test_the_dry_run_shows_the_chosen_rung_and_the_one_below_it():
    bench = Bench(budget_mb=1000, device=Device(kind="cuda", runtime_mb=0))
    long = model("long", 200, kv_mb_per_1k=100, context_length=16384, fit=("context", "cpu"), min_context=1024)
    report = bench.arbiter.dry_run(long)
    assert [r["rung"] for r in report["ladder"]] == ["full", "context", "cpu"]
    assert report["rung"] == "context" and report["rung_below"]["rung"] == "cpu"
    assert report["ladder"][0]["fits"] is False and report["ladder"][1]["fits"] is True


@scenario
async def test_the_dry_run_of_a_model_too_large_for_any_rung_says_never():
    bench = Bench(budget_mb=1000)
    report = bench.arbiter.dry_run(model("huge", 5000))
    assert report["verdict"] == "never" and "whole budget" in report["reason"]


# ---- slots: no more leases than the engine serves at once ---------------------------------------------


@scenario
async def test_a_model_leases_no_more_requests_than_its_slots_and_queues_the_rest_in_order():
    bench = Bench()
    one = model("one", slots=1)
    first = await bench.arbiter.acquire(one)
    later = [asyncio.create_task(bench.arbiter.acquire(one)) for _ in range(3)]
    await settle()
    assert bench.resident("one")["refcount"] == 1 and bench.resident("one")["queued"] == 3
    assert not any(task.done() for task in later)
    first.release()
    for index, task in enumerate(later):
        await settle()
        assert [t.done() for t in later] == [i <= index for i in range(3)]  # in arrival order, one at a time
        (await task).release()
    assert [w[1] for w in bench.events.waits] == ["load", "busy", "busy", "busy"]


@scenario
async def test_a_burst_on_a_one_slot_model_does_not_hold_another_model_past_the_aging_bound():
    bench = Bench(budget_mb=1000, max_wait_s=30)
    a, b = model("a", 600, slots=1), model("b", 600)
    await bench.use(a)
    burst = [asyncio.create_task(hold_lease(bench, a, 4)) for _ in range(30)]  # 120 s of work, one at a time
    await bench.clock.advance(9)
    arrived = bench.clock.now()
    (await bench.until(bench.arbiter.acquire(b))).release()
    assert bench.clock.now() - arrived <= 30  # a's backlog waits in the queue; only its current request drains
    await bench.until(asyncio.gather(*burst), step=5)
    assert bench.factory.started == ["a", "b", "a"]


# ---- run-time pins and what the page is told (issue 16) ---------------------------------------------


@scenario
async def test_a_model_pinned_at_run_time_is_not_evicted_and_does_not_expire():
    bench = Bench(budget_mb=1000)
    a = model("a", 500, keep_alive=60)
    await bench.use(a)
    bench.arbiter.pin(a, True)
    assert bench.resident("a")["pinned"] and bench.resident("a")["expires_in_s"] is None
    await bench.clock.advance(600)
    assert bench.resident("a") is not None
    with pytest.raises(ModelTooLarge, match="pinned"):
        await bench.arbiter.acquire(model("b", 600))
    await bench.use(model("c", 400))
    assert bench.residents() == {"a", "c"}


@scenario
async def test_pinning_an_absent_model_loads_it():
    bench = Bench()
    a = model("a")
    bench.arbiter.pin(a, True)
    await settle()
    assert bench.resident("a")["state"] == "ready" and bench.resident("a")["pinned"]


@scenario
async def test_a_model_that_can_never_fit_is_not_pinned():
    bench = Bench(budget_mb=1000)
    huge = model("huge", 2000)
    with pytest.raises(ModelTooLarge):
        bench.arbiter.pin(huge, True)
    assert not bench.arbiter.pinned(huge) and bench.factory.started == []


@scenario
async def test_unpinning_an_idle_model_starts_its_keep_alive():
    bench = Bench()
    a = model("a", keep_alive=60)
    await bench.use(a)
    bench.arbiter.pin(a, True)
    await bench.clock.advance(120)
    bench.arbiter.pin(a, False)
    assert not bench.resident("a")["pinned"] and bench.resident("a")["expires_in_s"] == 60
    await bench.clock.advance(60)
    assert bench.resident("a") is None and bench.arbiter.evictions == {"keep_alive": 1}


@scenario
async def test_a_models_yaml_pin_cannot_be_lifted_at_run_time():
    bench = Bench()
    pinned = model("p", pinned=True)
    with pytest.raises(ValueError, match=r"models\.yaml"):
        bench.arbiter.pin(pinned, False)
    assert bench.arbiter.pinned(pinned)


@scenario
async def test_an_admin_unload_ends_a_run_time_pin():
    bench = Bench()
    a = model("a")
    bench.arbiter.pin(a, True)
    await settle()
    assert await bench.arbiter.unload("a")
    assert not bench.arbiter.pinned(a) and bench.resident("a") is None


@scenario
async def test_the_arbiter_reports_a_change_for_each_state_a_snapshot_shows():
    bench = Bench()
    changes = []

    def seen(*_) -> None:  # the event hub publishes a snapshot after any report
        changes.append(bench.resident("a")["state"] if bench.resident("a") else None)

    for report in ("changed", "memory", "placed", "queue"):
        setattr(bench.events, report, seen)
    a = model("a")
    lease = await bench.arbiter.acquire(a)
    assert "loading" in changes and changes[-1] == "ready"
    changes.clear()
    await bench.arbiter.unload("a")  # it is in use: it drains
    assert changes == ["draining"]
    lease.release()
    await settle()
    assert changes[-1] is None


@scenario
async def test_the_snapshot_counts_the_requests_waiting_for_each_model():
    bench = Bench()
    a, b = model("a"), model("b")
    gate = bench.factory.hold("a")
    waiting = [asyncio.create_task(bench.arbiter.acquire(a)) for _ in range(3)]
    waiting.append(asyncio.create_task(bench.arbiter.acquire(b)))
    await settle()
    assert bench.arbiter.snapshot()["queues"] == {"a": 3, "b": 1}
    gate.set()
    for lease in await asyncio.gather(*waiting):
        lease.release()
    assert bench.arbiter.snapshot()["queues"] == {}
