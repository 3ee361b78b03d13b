"""The arbiter's orchestration, one test per behaviour, with no processes, no HTTP and no sleeps.

A fake worker factory, memory probe and clock go in through the constructor (as in Ollama's
sched_test.go): loads finish when a test says so, time moves when a test advances it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

import pytest

from backends.fake.spec import FakeOptions, FakeSpec
from backends.plan import LoadPlan
from backends.spec import FOREVER
from server.arbiter import Arbiter, State
from server.errors import ModelLoadFailed, ModelLoadTimeout, ModelTooLarge, QueueFull, QueueTimeout, ShuttingDown

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
    """Starts FakeWorkers; a model's load can be held at a gate, fail, or never finish."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.workers: dict[str, FakeWorker] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.hanging: set[str] = set()
        self.reports: dict[str, float] = {}  # what a worker reports, when not its plan's memory_mb

    def hold(self, model: str) -> asyncio.Event:
        self.gates[model] = asyncio.Event()
        return self.gates[model]

    async def start(self, plan: LoadPlan) -> FakeWorker:
        model = plan.model_id
        self.started.append(model)
        if model in self.gates:
            await self.gates[model].wait()
        if model in self.hanging:
            await asyncio.Event().wait()
        if model in self.failing:
            raise RuntimeError("weights unreadable")
        worker = FakeWorker(plan, self.reports.get(model, plan.memory_mb))
        self.workers[model] = worker
        return worker


class FakeProbe:
    def measure(self, pid: int, reported_mb: float) -> float:
        return reported_mb

    async def wait_released(self, pid: int, timeout_s: float) -> bool:
        return True


def model(name: str, mb: int = 300, **fields) -> FakeSpec:
    return FakeSpec(id=name, backend="fake", options=FakeOptions(memory_mb=mb), **fields)


async def settle(rounds: int = 30) -> None:
    """Let every task that can run, run (fake loads and unloads finish within a few steps)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Bench:
    def __init__(self, budget_mb: float = 1000, **kwargs):
        self.clock = FakeClock()
        self.factory = FakeFactory()
        self.arbiter = Arbiter(budget_mb, self.factory, FakeProbe(), clock=self.clock, **kwargs)

    def resident(self, name: str) -> dict | None:
        return next((r for r in self.arbiter.snapshot()["residents"] if r["model"] == name), None)

    def residents(self) -> set[str]:
        return {r["model"] for r in self.arbiter.snapshot()["residents"]}

    async def use(self, spec: FakeSpec, **kwargs) -> None:
        """One request: lease, release."""
        (await self.arbiter.acquire(spec, **kwargs)).release()
        await settle()


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
