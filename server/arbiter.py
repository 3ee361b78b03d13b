"""The VRAM arbiter: leases, loading, eviction, waiting, keep-alive.

Policy (what fits, whom to evict) lives in placement.py; this module orchestrates it on the event
loop. Collaborators come in through the constructor (worker factory, memory probe, clock, event
observer) so tests replace them without patching. All state is touched from the event loop only,
so a check and the change it leads to never have an `await` between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

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
    spec: Any
    mb: float
    state: State = State.LOADING
    worker: Any = None
    refcount: int = 0
    last_used: float = 0.0
    keep_alive_s: float = 300.0
    expires_at: float | None = None
    loaded_at: float = 0.0
    unload_when_idle: bool = False
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

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

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Arbiter:
    def __init__(
        self,
        budget_mb: float,
        factory,
        probe,
        *,
        overhead_mb: float = 0.0,
        max_queue: int = 64,
        queue_timeout_s: float = 300.0,
        load_timeout_s: float = 600.0,
        unload_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        events: Events | None = None,
    ):
        self.budget_mb = float(budget_mb)
        self._factory = factory
        self._probe = probe
        self._overhead_mb = overhead_mb
        self._max_queue = max_queue
        self._queue_timeout_s = queue_timeout_s
        self._load_timeout_s = load_timeout_s
        self._unload_timeout_s = unload_timeout_s
        self._clock = clock
        self._events = events or NoEvents()
        self._residents: dict[str, Resident] = {}
        self._ledger = placement.Ledger(self.budget_mb)
        self._measured: dict[str, float] = {}
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

    def estimate_mb(self, spec) -> float:
        """Static estimate plus runtime overhead, never below what a load of it measured."""
        static = max(spec.estimate_mb(), spec.memory_mb or 0) + self._overhead_mb
        return max(static, self._measured.get(spec.id, 0.0))

    # ---- leases ----------------------------------------------------------------------------

    async def acquire(self, spec, keep_alive_s: float | None = None) -> Lease:
        """A lease on a loaded `spec`, loading it (and evicting others) if needed."""
        if self.closing:
            raise ShuttingDown("the server is shutting down", retry_after_s=5)
        resident = self._residents.get(spec.id)
        if resident is not None and resident.state is State.READY:
            self._events.waited(spec.id, 0.0)  # every lease is observed, so wait percentiles are honest
            return self._lease(resident, keep_alive_s, 0.0)
        need = self.estimate_mb(spec)
        if need > self.budget_mb:
            raise ModelTooLarge(
                f"model {spec.id} needs about {need:.0f} MiB but the whole memory budget is "
                f"{self.budget_mb:.0f} MiB",
                param="model",
            )
        if self._waiting >= self._max_queue:
            raise QueueFull(
                f"{self._waiting} requests are already waiting for models; try again shortly",
                retry_after_s=self._last_load_s,
            )
        started = self._clock()
        self._waiting += 1
        self._wanted[spec.id] = self._wanted.get(spec.id, 0) + 1
        self._events.queue(self._waiting)
        try:
            # asyncio.timeout, not wait_for: a lease granted as the deadline hits is never lost
            async with asyncio.timeout(self._queue_timeout_s):
                return await self._wait_for(spec, keep_alive_s, started)
        except TimeoutError:
            raise QueueTimeout(
                f"model {spec.id} did not become available within {self._queue_timeout_s:.0f}s",
                retry_after_s=self._last_load_s,
            ) from None
        finally:
            self._waiting -= 1
            self._wanted[spec.id] -= 1
            if not self._wanted[spec.id]:
                del self._wanted[spec.id]
            self._events.queue(self._waiting)
            self._notify()  # others may now plan around this model

    async def _wait_for(self, spec, keep_alive_s: float | None, started: float) -> Lease:
        while True:
            if self.closing:
                raise ShuttingDown("the server is shutting down", retry_after_s=5)
            changed = self._changed
            resident = self._residents.get(spec.id)
            if resident is not None and resident.state is State.READY:
                waited = self._clock() - started
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

    def _plan_load(self, spec) -> None:
        need = self.estimate_mb(spec)
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
            self._loading, self._loading_since = spec.id, self._clock()
            self._spawn(self._load(spec, need, victims, attempt))

    def _views(self) -> list[placement.Resident]:
        return [
            placement.Resident(
                id=r.id,
                mb=r.mb,
                busy=r.refcount > 0 or r.state in (State.LOADING, State.UNLOADING),
                wanted=r.id in self._wanted,
                pinned=r.spec.pinned,
                keep_alive_s=placement.FOREVER if r.keep_alive_s < 0 else r.keep_alive_s,
                last_used=r.last_used,
                draining=r.state in (State.DRAINING, State.UNLOADING),  # its memory is on its way out
            )
            for r in self._residents.values()
        ]

    def _lease(self, resident: Resident, keep_alive_s: float | None, waited_s: float) -> Lease:
        resident.refcount += 1
        resident.last_used = self._clock()
        resident.expires_at = None
        if resident._timer is not None:
            resident._timer.cancel()
            resident._timer = None
        return Lease(self, resident, keep_alive_s, waited_s)

    def _release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        resident = lease.resident
        resident.refcount -= 1
        resident.last_used = self._clock()
        if resident.refcount > 0 or self._residents.get(resident.id) is not resident:
            return self._notify()
        keep_alive = resident.spec.keep_alive if lease.keep_alive_s is None else lease.keep_alive_s
        resident.keep_alive_s = keep_alive
        if resident.state is State.DRAINING:
            if resident.unload_when_idle or self._waiting:
                self._evict_soon(resident, "admin" if resident.unload_when_idle else "drained")
                return self._notify()
            resident.state = State.READY  # whoever wanted the room has gone
        if resident.state is State.READY and not resident.spec.pinned:
            if keep_alive == 0:
                self._evict_soon(resident, "keep_alive")
            elif keep_alive > 0:
                resident.expires_at = self._clock() + keep_alive
                resident._timer = asyncio.get_running_loop().call_later(keep_alive, self._expire, resident)
        self._notify()

    def _expire(self, resident: Resident) -> None:
        resident._timer = None
        if resident.state is State.READY and resident.refcount == 0 and self._residents.get(resident.id) is resident:
            self._evict_soon(resident, "keep_alive")

    # ---- loading and unloading ----------------------------------------------------------------

    async def _load(self, spec, need: float, victims: list[Resident], attempt: asyncio.Future) -> None:
        began = self._clock()
        resident = None
        try:
            for victim in victims:
                await self._unload(victim, "capacity")
            resident = Resident(spec=spec, mb=need, keep_alive_s=spec.keep_alive, last_used=self._clock())
            self._residents[spec.id] = resident
            self._account(resident)
            log.info("loading %s (estimate %.0f MiB, budget %.0f MiB)", resident, need, self.budget_mb)
            try:
                async with asyncio.timeout(self._load_timeout_s):
                    worker = await self._factory.start(spec)
            except TimeoutError:
                raise ModelLoadTimeout(
                    f"model {spec.id} did not load within {self._load_timeout_s:.0f}s", retry_after_s=5
                ) from None
            measured = self._probe.measure(worker.pid, worker.reported_mb + self._overhead_mb)
            self._measured[spec.id] = max(self._measured.get(spec.id, 0.0), measured)
            resident.worker, resident.mb = worker, measured
            resident.state, resident.loaded_at = State.READY, self._clock()
            worker.on_exit(self._on_worker_exit)
            self._account(resident)
            self._settle_over_budget(resident)
            self.loads += 1
            self._last_load_s = max(1.0, self._clock() - began)
            self._events.loaded(spec.id, "success", self._clock() - began)
            log.info("loaded %s in %.2fs (estimated %.0f MiB)", resident, self._clock() - began, need)
            attempt.set_result(None)
        except Exception as exc:
            if resident is not None and self._residents.get(spec.id) is resident:
                del self._residents[spec.id]
                self._ledger.drop(spec.id)
                self._publish_memory()
            result = "timeout" if isinstance(exc, ModelLoadTimeout) else "failure"
            self._events.loaded(spec.id, result, self._clock() - began)
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
        """A load that measured above its estimate may push the total over; evict idle models back under."""
        over = self._ledger.used_mb - self.budget_mb
        if over <= 0:
            return
        idle = [r for r in self._views() if r.id != loaded.id and not r.busy and not r.pinned]
        for view in placement.eviction_order(idle):
            if over <= 0:
                break
            victim = self._residents[view.id]
            self._evict_soon(victim, "over_budget")
            over -= victim.mb
        if over > 0:
            log.error("%s measured above its estimate; %.0f MiB over budget with nothing idle to evict",
                      loaded, over)

    def _evict_soon(self, resident: Resident, reason: str) -> None:
        """Stop leases now (no await between this and the state change), unload in the background."""
        self._begin_unload(resident)
        self._spawn(self._unload(resident, reason))

    def _begin_unload(self, resident: Resident) -> None:
        resident.state = State.UNLOADING
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

    def _on_worker_exit(self, worker) -> None:
        resident = self._residents.get(worker.spec.id)
        if resident is None or resident.worker is not worker or resident.state is State.UNLOADING:
            return
        log.error("%s exited unexpectedly; it will be started again on the next request", resident)
        self._begin_unload(resident)

        async def reap() -> None:
            await self._probe.wait_released(worker.pid, self._unload_timeout_s)
            self._forget(resident, "crashed")

        self._spawn(reap())

    def preload(self, spec) -> None:
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
        if resident is None or resident.state is State.UNLOADING:
            return False
        if resident.state is State.LOADING:
            return False
        if resident.refcount > 0:
            resident.state, resident.unload_when_idle = State.DRAINING, True
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
        return {"model": self._loading, "seconds": round(self._clock() - self._loading_since, 3)}

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
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
                    "pid": r.worker.pid if r.worker else None,
                    "refcount": r.refcount,
                    "pinned": r.spec.pinned,
                    "keep_alive_s": r.keep_alive_s,
                    "expires_in_s": None if r.expires_at is None else round(max(0.0, r.expires_at - now), 3),
                }
                for r in self._residents.values()
            ],
        }
