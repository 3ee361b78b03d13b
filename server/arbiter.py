"""The VRAM arbiter: leases, loading, eviction, waiting, keep-alive.

Policy (what fits, whom to evict, what a release leads to) lives in placement.py; this module
orchestrates it on the event loop. Collaborators come in through the constructor (worker factory,
memory probe, clock, event observer) so tests replace them without patching and drive time by
hand. All state is touched from the event loop only, so a check and the change it leads to never
have an `await` between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from backends.plan import Device, LoadPlan, MemoryEstimate
from backends.spec import FOREVER, BaseSpec
from server import placement
from server.errors import (
    ModelLoadFailed,
    ModelLoadTimeout,
    ModelTooLarge,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)

log = logging.getLogger("modelyard.arbiter")


class State(Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"  # takes no new leases; unloads when its last lease ends
    UNLOADING = "unloading"


class Handle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time as the arbiter sees it: now, and a callback after a delay (keep-alive, timeouts)."""

    def now(self) -> float: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle: ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        return asyncio.get_running_loop().call_later(delay, callback)


class Worker(Protocol):
    """What the arbiter needs of a running worker (server/worker_client.py's WorkerProcess)."""

    pid: int
    reported_mb: float

    def on_exit(self, callback: Callable[[Any], None]) -> None: ...
    async def stop(self) -> None: ...


class WorkerFactory(Protocol):
    async def start(self, plan: LoadPlan) -> Worker: ...


class Probe(Protocol):
    """Measures memory (server/memory.py's MemoryProbe)."""

    def measure(self, pid: int, reported_mb: float) -> float: ...
    async def wait_released(self, pid: int, timeout_s: float) -> bool: ...


class Events(Protocol):
    """What the arbiter reports as it works (metrics implement this)."""

    def loaded(self, model: str, result: str, seconds: float) -> None: ...
    def evicted(self, model: str, reason: str) -> None: ...
    def waited(self, model: str, seconds: float) -> None: ...
    def memory(self, used_mb: float, budget_mb: float, per_model_mb: dict[str, float]) -> None: ...
    def queue(self, waiting: int) -> None: ...


class NoEvents:
    def loaded(self, model: str, result: str, seconds: float) -> None: ...
    def evicted(self, model: str, reason: str) -> None: ...
    def waited(self, model: str, seconds: float) -> None: ...
    def memory(self, used_mb: float, budget_mb: float, per_model_mb: dict[str, float]) -> None: ...
    def queue(self, waiting: int) -> None: ...


@dataclass(eq=False)
class Resident:
    """A model in memory, or on its way in or out."""

    spec: BaseSpec
    estimate: MemoryEstimate
    mb: float  # accounted: the estimate while loading, then what the load measured
    state: State = State.LOADING
    worker: Worker | None = None
    refcount: int = 0
    last_used: float = 0.0
    keep_alive_s: float = 300.0
    expires_at: float | None = None
    unload_requested: bool = False  # an admin asked for the unload while it was serving
    _timer: Handle | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.spec.id

    def __str__(self) -> str:  # every log line names the model the same way
        pid = self.worker.pid if self.worker else "-"
        return f"{self.spec.id}/{self.spec.backend}/{self.mb:.0f}MiB/pid={pid}"


class Lease:
    """The right to use a resident model's worker until released."""

    def __init__(self, arbiter: Arbiter, resident: Resident, keep_alive_s: float | None, waited_s: float):
        self._arbiter = arbiter
        self.resident = resident
        self.keep_alive_s = keep_alive_s
        self.waited_s = waited_s
        self.released = False

    @property
    def worker(self):
        return self.resident.worker

    def release(self) -> None:
        self._arbiter._release(self)


class Arbiter:
    def __init__(
        self,
        budget_mb: float,
        factory: WorkerFactory,
        probe: Probe,
        *,
        device: Device | None = None,
        max_queue: int = 64,
        queue_timeout_s: float = 300.0,
        load_timeout_s: float = 600.0,
        unload_timeout_s: float = 30.0,
        clock: Clock | None = None,
        events: Events | None = None,
    ):
        self.budget_mb = float(budget_mb)
        self._factory = factory
        self._probe = probe
        self._device = device or Device()
        self._max_queue = max_queue
        self._queue_timeout_s = queue_timeout_s
        self._load_timeout_s = load_timeout_s
        self._unload_timeout_s = unload_timeout_s
        self._clock = clock or LoopClock()
        self._events = events or NoEvents()
        self._residents: dict[str, Resident] = {}
        self._ledger = placement.Ledger(self.budget_mb)
        self._measured: dict[str, float] = {}
        self._plans: dict[str, tuple[LoadPlan, MemoryEstimate]] = {}  # read again by each first waiter
        self._attempts: dict[str, asyncio.Future] = {}
        self._loading: str | None = None
        self._loading_since = 0.0
        self._waiting = 0
        self._wanted: dict[str, int] = {}  # waiters per model: a model someone waits for is not idle
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._last_load_s = 1.0
        self.loads = 0
        self.evictions: dict[str, int] = {}
        self.closing = False

    # ---- estimates -------------------------------------------------------------------------

    def plan(self, spec: BaseSpec) -> tuple[LoadPlan, MemoryEstimate]:
        """How `spec` would load on this arbiter's device, and its estimated footprint."""
        if spec.id not in self._plans:
            load_plan = spec.resolve(self._device)
            self._plans[spec.id] = (load_plan, load_plan.estimate())
        return self._plans[spec.id]

    def estimate_mb(self, spec: BaseSpec) -> float:
        """The footprint a load of `spec` is planned with (never below what a load of it measured)."""
        return placement.expected_mb(self.plan(spec)[1], spec.memory_mb, self._measured.get(spec.id, 0.0))

    # ---- leases ----------------------------------------------------------------------------

    async def acquire(self, spec: BaseSpec, keep_alive_s: float | None = None) -> Lease:
        """A lease on a loaded `spec`, loading it (and evicting others) if needed."""
        if self.closing:
            raise ShuttingDown("the server is shutting down", retry_after_s=5)
        resident = self._residents.get(spec.id)
        if resident is not None and resident.state is State.READY:
            self._events.waited(spec.id, 0.0)  # every lease is observed, so wait percentiles are honest
            return self._lease(resident, keep_alive_s, 0.0)
        if spec.id not in self._wanted:
            self._plans.pop(spec.id, None)  # its files may have changed since it was last planned
        reason = placement.refusal(self.estimate_mb(spec), self._views(), self.budget_mb)
        if reason:
            raise ModelTooLarge(f"model {spec.id} cannot fit: {reason}", param="model")
        if self._waiting >= self._max_queue:
            raise QueueFull(f"{self._waiting} requests are already waiting for models; try again shortly",
                            retry_after_s=self._last_load_s)
        started = self._clock.now()
        self._waiting += 1
        self._wanted[spec.id] = self._wanted.get(spec.id, 0) + 1
        self._events.queue(self._waiting)
        try:
            async with self._deadline(self._queue_timeout_s):
                return await self._wait_for(spec, keep_alive_s, started)
        except TimeoutError:
            raise QueueTimeout(f"model {spec.id} did not become available within {self._queue_timeout_s:.0f}s",
                               retry_after_s=self._last_load_s) from None
        finally:
            self._waiting -= 1
            self._wanted[spec.id] -= 1
            if not self._wanted[spec.id]:
                del self._wanted[spec.id]
            self._events.queue(self._waiting)
            self._notify()  # others may now plan around this model

    async def _wait_for(self, spec: BaseSpec, keep_alive_s: float | None, started: float) -> Lease:
        while True:
            if self.closing:
                raise ShuttingDown("the server is shutting down", retry_after_s=5)
            changed = self._changed
            resident = self._residents.get(spec.id)
            if resident is not None and resident.state is State.READY:
                waited = self._clock.now() - started
                self._events.waited(spec.id, waited)
                return self._lease(resident, keep_alive_s, waited)
            attempt = self._attempts.get(spec.id)
            if attempt is not None:
                await asyncio.shield(attempt)  # a failed load raises here, for every waiter
                continue
            if resident is None and self._loading is None:
                self._plan_load(spec)
                if spec.id in self._attempts:
                    continue
            await changed.wait()

    def _plan_load(self, spec: BaseSpec) -> None:
        load_plan, estimate = self.plan(spec)
        need = placement.expected_mb(estimate, spec.memory_mb, self._measured.get(spec.id, 0.0))
        decision = placement.plan(need, self._views(), self.budget_mb)
        if decision.verdict is placement.Verdict.NEVER:
            raise ModelTooLarge(f"model {spec.id} cannot fit: {decision.reason}", param="model")
        if decision.verdict is placement.Verdict.DRAIN:
            for model_id in decision.drain:
                victim = self._residents[model_id]
                victim.state = State.DRAINING
                log.info("draining %s to make room for %s", victim, spec.id)
            return
        if decision.verdict is placement.Verdict.FITS:
            victims = [self._residents[model_id] for model_id in decision.evict]
            for victim in victims:
                self._begin_unload(victim)
            attempt = asyncio.get_running_loop().create_future()
            attempt.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved by waiters
            self._attempts[spec.id] = attempt
            self._loading, self._loading_since = spec.id, self._clock.now()
            resident = Resident(spec=spec, estimate=estimate, mb=need, keep_alive_s=spec.keep_alive)
            self._spawn(self._load(resident, load_plan, victims, attempt))

    def _views(self) -> list[placement.ResidentView]:
        return [
            placement.ResidentView(
                id=r.id,
                mb=r.mb,
                busy=r.refcount > 0 or r.state in (State.LOADING, State.UNLOADING),
                wanted=r.id in self._wanted,
                pinned=r.spec.pinned,
                keep_alive_s=r.keep_alive_s,
                last_used=r.last_used,
                draining=r.state in (State.DRAINING, State.UNLOADING),  # its memory is on its way out
            )
            for r in self._residents.values()
        ]

    def _lease(self, resident: Resident, keep_alive_s: float | None, waited_s: float) -> Lease:
        resident.refcount += 1
        resident.last_used = self._clock.now()
        resident.expires_at = None
        self._cancel_timer(resident)
        return Lease(self, resident, keep_alive_s, waited_s)

    def _release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        resident = lease.resident
        resident.refcount -= 1
        resident.last_used = self._clock.now()
        current = self._residents.get(resident.id) is resident
        if resident.refcount == 0 and current and resident.state in (State.READY, State.DRAINING):
            resident.keep_alive_s = resident.spec.keep_alive if lease.keep_alive_s is None else lease.keep_alive_s
            self._settle_release(resident)
        self._notify()

    def _settle_release(self, resident: Resident) -> None:
        decision = placement.after_release(
            draining=resident.state is State.DRAINING, unload_requested=resident.unload_requested,
            others_waiting=self._waiting > 0, pinned=resident.spec.pinned, keep_alive_s=resident.keep_alive_s)
        if decision.resume:
            resident.state = State.READY
        if decision.unload:
            self._evict_soon(resident, decision.unload)
        elif decision.expire_in_s is not None:
            resident.expires_at = self._clock.now() + decision.expire_in_s
            resident._timer = self._clock.call_later(decision.expire_in_s, lambda: self._expire(resident))

    def _expire(self, resident: Resident) -> None:
        resident._timer = None
        if resident.state is State.READY and resident.refcount == 0 and self._residents.get(resident.id) is resident:
            self._evict_soon(resident, "keep_alive")

    # ---- loading and unloading ----------------------------------------------------------------

    async def _load(self, resident: Resident, load_plan: LoadPlan, victims: list[Resident],
                    attempt: asyncio.Future) -> None:
        spec = resident.spec
        began = self._clock.now()
        try:
            for victim in victims:
                await self._unload(victim, "capacity")
            resident.last_used = self._clock.now()
            self._residents[spec.id] = resident
            self._account(resident)
            log.info("loading %s: estimate %s, budget %.0f MiB", resident, resident.estimate, self.budget_mb)
            try:
                async with self._deadline(self._load_timeout_s):
                    worker = await self._factory.start(load_plan)
            except TimeoutError:
                raise ModelLoadTimeout(f"model {spec.id} did not load within {self._load_timeout_s:.0f}s",
                                       retry_after_s=5) from None
            measured = self._probe.measure(worker.pid, worker.reported_mb + resident.estimate.runtime_mb)
            self._measured[spec.id] = max(self._measured.get(spec.id, 0.0), measured)
            resident.worker, resident.mb = worker, measured
            resident.state = State.READY
            worker.on_exit(self._on_worker_exit)
            self._account(resident)
            self._settle_over_budget(resident)
            self.loads += 1
            self._last_load_s = max(1.0, self._clock.now() - began)
            self._events.loaded(spec.id, "success", self._clock.now() - began)
            log.info("loaded %s in %.2fs (estimated %.0f MiB)", resident, self._clock.now() - began,
                     resident.estimate.total_mb)
            attempt.set_result(None)
        except Exception as exc:
            if self._residents.get(spec.id) is resident:
                del self._residents[spec.id]
                self._ledger.drop(spec.id)
                self._publish_memory()
            result = "timeout" if isinstance(exc, ModelLoadTimeout) else "failure"
            self._events.loaded(spec.id, result, self._clock.now() - began)
            if not isinstance(exc, ModelLoadFailed | ModelLoadTimeout):
                log.exception("loading %s failed", spec.id)
                exc = ModelLoadFailed(f"model {spec.id} failed to load: {exc}")
            log.warning("%s", exc.message)
            attempt.set_exception(exc)
        finally:
            self._attempts.pop(spec.id, None)
            self._loading = None
            self._notify()

    def _settle_over_budget(self, loaded: Resident) -> None:
        victims, short = placement.over_budget_victims(loaded.id, self._views(), self.budget_mb)
        for model_id in victims:
            self._evict_soon(self._residents[model_id], "over_budget")
        if short > 0:
            log.error("%s measured above its estimate; %.0f MiB over budget with nothing idle to evict",
                      loaded, short)

    def _evict_soon(self, resident: Resident, reason: str) -> None:
        """Stop leases now (no await between this and the state change), unload in the background."""
        self._begin_unload(resident)
        self._spawn(self._unload(resident, reason))

    def _begin_unload(self, resident: Resident) -> None:
        resident.state = State.UNLOADING
        self._cancel_timer(resident)

    @staticmethod
    def _cancel_timer(resident: Resident) -> None:
        if resident._timer is not None:
            resident._timer.cancel()
            resident._timer = None

    async def _unload(self, resident: Resident, reason: str) -> None:
        self._begin_unload(resident)
        log.info("unloading %s (%s)", resident, reason)
        if resident.worker is not None:
            await resident.worker.stop()
            await self._probe.wait_released(resident.worker.pid, self._unload_timeout_s)
        self._forget(resident, reason)

    def _forget(self, resident: Resident, reason: str) -> None:
        if self._residents.get(resident.id) is resident:
            del self._residents[resident.id]
            self._ledger.drop(resident.id)
            self.evictions[reason] = self.evictions.get(reason, 0) + 1
            self._events.evicted(resident.id, reason)
            self._publish_memory()
        self._notify()

    def _on_worker_exit(self, worker: Worker) -> None:
        resident = next((r for r in self._residents.values() if r.worker is worker), None)
        if resident is None or resident.state is State.UNLOADING:
            return
        log.error("%s exited unexpectedly; it will be started again on the next request", resident)
        self._begin_unload(resident)
        reason = "hung" if getattr(worker, "unhealthy", None) else "crashed"  # killed by server/watchdog.py

        async def reap() -> None:
            await self._probe.wait_released(worker.pid, self._unload_timeout_s)
            self._forget(resident, reason)

        self._spawn(reap())

    def preload(self, spec: BaseSpec) -> None:
        """Load in the background (pinned models at start-up); failures are logged, not raised."""

        async def load() -> None:
            try:
                lease = await self.acquire(spec)
            except Exception as exc:
                log.warning("could not preload %s: %s", spec.id, getattr(exc, "message", exc))
                return
            lease.release()

        self._spawn(load())

    async def unload(self, model_id: str) -> bool:
        """Admin unload: now if idle, else once its last lease ends. False if not resident."""
        resident = self._residents.get(model_id)
        if resident is None or resident.state in (State.UNLOADING, State.LOADING):
            return False
        if resident.refcount > 0:
            resident.state, resident.unload_requested = State.DRAINING, True
            return True
        await self._unload(resident, "admin")
        return True

    async def close(self) -> None:
        """Stop every worker (server shutdown)."""
        self.closing = True
        self._notify()
        for attempt in list(self._attempts.values()):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await attempt
        await asyncio.gather(
            *(self._unload(r, "shutdown") for r in list(self._residents.values()) if r.state is not State.UNLOADING),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    # ---- bookkeeping ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _deadline(self, seconds: float) -> AsyncIterator[None]:
        """asyncio.timeout on the injected clock: past `seconds`, the body is cancelled and
        TimeoutError raised. A result the body returned before the deadline is never lost."""
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = self._clock.call_later(seconds, expire)
        try:
            yield
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()

    def _account(self, resident: Resident) -> None:
        self._ledger.set(resident.id, resident.mb)
        self._publish_memory()

    def _publish_memory(self) -> None:
        self._events.memory(self._ledger.used_mb, self.budget_mb, dict(self._ledger.reserved))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def used_mb(self) -> float:
        return self._ledger.used_mb

    @property
    def peak_mb(self) -> float:
        return self._ledger.peak_mb

    @property
    def waiting(self) -> int:
        return self._waiting

    def is_resident(self, model_id: str) -> bool:
        resident = self._residents.get(model_id)
        return resident is not None and resident.state is State.READY

    def worker_of(self, model_id: str):
        resident = self._residents.get(model_id)
        return resident.worker if resident is not None else None

    def loading(self) -> dict[str, Any] | None:
        if self._loading is None:
            return None
        return {"model": self._loading, "seconds": round(self._clock.now() - self._loading_since, 3)}

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.now()
        return {
            "budget_mb": self.budget_mb,
            "used_mb": self.used_mb,
            "peak_mb": self.peak_mb,
            "waiting": self._waiting,
            "loading": self.loading(),
            "loads": self.loads,
            "evictions": dict(self.evictions),
            "residents": [
                {
                    "model": r.id,
                    "backend": r.spec.backend,
                    "state": r.state.value,
                    "memory_mb": round(r.mb, 1),
                    "estimate": r.estimate.breakdown(),
                    "pid": r.worker.pid if r.worker else None,
                    "refcount": r.refcount,
                    "pinned": r.spec.pinned,
                    "keep_alive_s": -1 if r.keep_alive_s == FOREVER else r.keep_alive_s,  # models.yaml's spelling
                    "expires_in_s": None if r.expires_at is None else round(max(0.0, r.expires_at - now), 3),
                }
                for r in self._residents.values()
            ],
        }
