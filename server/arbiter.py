"""The VRAM arbiter: leases, loading, eviction, parking, admission, waiting, keep-alive.

Policy lives in pure modules and this one orchestrates it on the event loop: what fits and whom
to evict or drain (placement.py), which waiting model goes next and when a busy one must give way
(admission.py), which rung of the fit ladder a model takes (ladder.py), and whether an evicted
model parks in the warm tier (placement.ram_room; warm.py does the parking). The dry-run plan
(`dry_run`, /admin/plan) asks those same functions about a hypothetical request.

Collaborators come in through the constructor (worker factory, memory probe, warm store, clock,
event observer) so tests and the simulator (bench/bench_scheduler.py) replace them without
patching and drive time by hand. All state is touched from the event loop only, so a check and
the change it leads to never have an `await` between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from backends.plan import MIB, Device, LoadPlan, MemoryEstimate
from backends.spec import FOREVER, BaseSpec
from server import admission, ladder, placement
from server.errors import (
    ModelLoadFailed,
    ModelLoadTimeout,
    ModelTooLarge,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)
from server.warm import WarmCopy

log = logging.getLogger("modelyard.arbiter")

# Evictions that park the model when the warm tier has room; an admin unload, a crash and
# shutdown drop it.
PARK_REASONS = frozenset({"capacity", "drained", "over_budget", "keep_alive"})


class State(Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"  # takes no new leases; unloads when its last lease ends
    UNLOADING = "unloading"


class Handle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time as the arbiter sees it: now, and a callback after a delay (keep-alive, timeouts, aging)."""

    def now(self) -> float: ...
    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle: ...


class LoopClock:
    """The event loop's clock (monotonic; virtual under the simulator's loop)."""

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
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


class Warm(Protocol):
    """The warm tier's store (server/warm.py's WarmStore)."""

    def fingerprint(self, spec: BaseSpec) -> tuple: ...
    def fresh(self, copy: WarmCopy, spec: BaseSpec) -> bool: ...
    async def park(self, model_id: str, plan: LoadPlan, worker: Any, fingerprint: tuple) -> WarmCopy: ...
    def drop(self, copy: WarmCopy) -> None: ...
    def close(self) -> None: ...


class Events(Protocol):
    """What the arbiter reports as it works (metrics implement this)."""

    def loaded(self, model: str, result: str, seconds: float) -> None: ...
    def swapped_in(self, model: str, source: str, seconds: float) -> None: ...
    def estimated(self, backend: str, ratio: float) -> None: ...
    def evicted(self, model: str, reason: str) -> None: ...
    def waited(self, model: str, seconds: float) -> None: ...
    def waited_for(self, model: str, reason: str, seconds: float, swap_s: float) -> None:
        """A lease after a wait: `reason` load, drain, queue (deferred to another model's work) or
        busy (behind its own model's requests); `swap_s` of it until its model was ready for it."""
    def memory(self, used_mb: float, budget_mb: float, per_model_mb: dict[str, float]) -> None: ...
    def warm(self, parked: int, parked_mb: float) -> None: ...
    def placed(self, model: str, rung: str) -> None: ...
    def switched(self, reason: str) -> None: ...
    def queue(self, waiting: int) -> None: ...
    def changed(self) -> None:
        """Something snapshot() shows changed (a state, a lease, a timer); server/events.py streams it."""


class NoEvents:
    def loaded(self, model: str, result: str, seconds: float) -> None: ...
    def swapped_in(self, model: str, source: str, seconds: float) -> None: ...
    def estimated(self, backend: str, ratio: float) -> None: ...
    def evicted(self, model: str, reason: str) -> None: ...
    def waited(self, model: str, seconds: float) -> None: ...
    def waited_for(self, model: str, reason: str, seconds: float, swap_s: float) -> None: ...
    def memory(self, used_mb: float, budget_mb: float, per_model_mb: dict[str, float]) -> None: ...
    def warm(self, parked: int, parked_mb: float) -> None: ...
    def placed(self, model: str, rung: str) -> None: ...
    def switched(self, reason: str) -> None: ...
    def queue(self, waiting: int) -> None: ...
    def changed(self) -> None: ...


@dataclass(eq=False)
class Resident:
    """A model in device memory, or on its way in or out."""

    spec: BaseSpec
    rung: ladder.Rung  # the fit-ladder rung it loaded at (its plan from disk)
    mb: float  # accounted: the estimate while loading, then what the load measured
    state: State = State.LOADING
    worker: Worker | None = None
    source: str = "disk"  # where its weights came from: "disk" or "ram" (the warm tier)
    fingerprint: tuple = ()  # its files when it loaded (a warm copy made of it is stale once they change)
    host_mb: float = 0.0  # what it holds in system RAM off the device budget
    slots: int | None = None  # leases it may hold at once: its engine's parallelism (None: no limit)
    refcount: int = 0
    leases: dict[int, float] = field(default_factory=dict)  # lease id -> when it began (expected drain)
    last_used: float = 0.0
    keep_alive_s: float = 300.0
    expires_at: float | None = None
    unload_requested: bool = False  # an admin asked for the unload while it was serving
    _timer: Handle | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def estimate(self) -> MemoryEstimate:
        return self.rung.estimate

    @property
    def has_slot(self) -> bool:
        """Ready, and serving fewer requests than its engine serves at once."""
        return self.state is State.READY and (self.slots is None or self.refcount < self.slots)

    def __str__(self) -> str:  # every log line names the model the same way
        pid = self.worker.pid if self.worker else "-"
        return f"{self.spec.id}/{self.spec.backend}/{self.mb:.0f}MiB/pid={pid}"


@dataclass(eq=False)
class Parked:
    """A model's copy in the warm tier (its device footprint may be gone or back in use)."""

    copy: WarmCopy
    rung: ladder.Rung  # the rung it was loaded at; a resume loads the same
    last_used: float
    in_use: bool = False  # a load is reading it

    @property
    def mb(self) -> float:
        return self.copy.bytes / MIB


@dataclass(eq=False)
class Waiter:
    spec: BaseSpec
    arrived: float
    reason: str = "load"  # what kept its model off the device: "load", "queue" (admission held it), "drain"
    error: Exception | None = None  # admission found it can never load
    away_since: float | None = None  # since when its model has not been serving (None: it is)
    swap_s: float = 0.0  # time it has waited while its model was off the device or draining
    was_away: bool = False  # its model was not serving at some point of its wait


class Lease:
    """The right to use a resident model's worker until released."""

    def __init__(self, arbiter: Arbiter, resident: Resident, keep_alive_s: float | None, waited_s: float):
        self._arbiter = arbiter
        self.resident = resident
        self.keep_alive_s = keep_alive_s
        self.waited_s = waited_s
        self.released = False
        self.id = 0  # the resident's key for when this lease began

    @property
    def worker(self):
        return self.resident.worker

    @property
    def placement(self) -> str:
        """The fit-ladder rung the model is serving at (the x-modelyard-placement header)."""
        return self.resident.rung.placement

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
        max_wait_s: float = 30.0,
        ram_budget_mb: float = 0.0,
        warm: Warm | None = None,
        clock: Clock | None = None,
        events: Events | None = None,
    ):
        self.budget_mb = float(budget_mb)
        self.ram_budget_mb = float(ram_budget_mb) if warm is not None else 0.0
        self._factory = factory
        self._probe = probe
        self._store = warm
        self._device = device or Device()
        self._max_queue = max_queue
        self._queue_timeout_s = queue_timeout_s
        self._load_timeout_s = load_timeout_s
        self._unload_timeout_s = unload_timeout_s
        self.max_wait_s = max_wait_s
        self._clock = clock or LoopClock()
        self._events = events or NoEvents()
        self._residents: dict[str, Resident] = {}
        self._parked: dict[str, Parked] = {}
        self._ledger = placement.Ledger(self.budget_mb)
        self._measured: dict[tuple[str, str], float] = {}  # (model, rung) -> the largest load measured
        self._ladders: dict[str, ladder.Ladder] = {}  # read again by each first waiter
        self._load_s: dict[tuple[str, str], deque[float]] = {}  # (model, source) -> recent load times
        self._park_s: deque[float] = deque(maxlen=16)
        self._lease_s: dict[str, deque[float]] = {}  # model -> recent lease durations
        self._attempts: dict[str, asyncio.Future] = {}
        self._waiters: list[Waiter] = []
        self._wanted: dict[str, int] = {}  # waiters per model: a model someone waits for is not idle
        self._drained_for: set[str] = set()  # models busy ones were drained for (their load is a switch)
        self._pins: set[str] = set()  # pinned by an admin at run time (models.yaml pins are on the spec)
        self._loading: str | None = None
        self._loading_since = 0.0
        self._hold: Handle | None = None
        self._hold_at: float | None = None
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._lease_ids = 0
        self._last_load_s = 1.0
        self.loads = 0
        self.evictions: dict[str, int] = {}
        self.switches: dict[str, int] = {}
        self.closing = False

    # ---- plans and the fit ladder ---------------------------------------------------------------

    def ladder(self, spec: BaseSpec, *, every_rung: bool = False) -> ladder.Ladder:
        """The fit ladder for `spec` against the budget less the pinned models (cached per model)."""
        if every_rung:
            return ladder.climb(spec, self._device, self._room_mb(spec), self._need(spec), every_rung=True)
        if spec.id not in self._ladders:
            self._ladders[spec.id] = ladder.climb(spec, self._device, self._room_mb(spec), self._need(spec))
        return self._ladders[spec.id]

    def rung(self, spec: BaseSpec) -> ladder.Rung:
        """The rung `spec` loads (or is loaded) at: its parked copy's, else the ladder's choice (the
        configured plan when nothing fits, which a load then refuses)."""
        resident = self._residents.get(spec.id)
        if resident is not None:
            return resident.rung
        parked = self._parked.get(spec.id)
        if parked is not None:
            return parked.rung
        chosen = self.ladder(spec)
        return chosen.chosen or chosen.full

    def plan(self, spec: BaseSpec) -> tuple[LoadPlan, MemoryEstimate]:
        """How `spec` would load on this arbiter's device, and its estimated device footprint."""
        rung = self.rung(spec)
        return rung.plan, rung.estimate

    def estimate_mb(self, spec: BaseSpec) -> float:
        """The footprint a load of `spec` is planned with (never below what a load of it measured)."""
        return self._need_of(spec, self.rung(spec))

    def _need_of(self, spec: BaseSpec, rung: ladder.Rung) -> float:
        return self._need(spec)(rung.name, rung.estimate)

    def _need(self, spec: BaseSpec) -> Callable[[str, MemoryEstimate], float]:
        def need(rung: str, estimate: MemoryEstimate) -> float:
            if estimate.total_mb == 0:
                return 0.0  # wholly in host RAM: nothing on the device budget
            hint = spec.memory_mb if rung == ladder.FULL else None  # the hint is for the model as configured
            return placement.expected_mb(estimate, hint, self._measured.get((spec.id, rung), 0.0))

        return need

    def _room_mb(self, spec: BaseSpec) -> float:
        pinned = sum(r.mb for r in self._residents.values() if self.pinned(r.spec) and r.id != spec.id)
        return self.budget_mb - pinned

    def _refuse(self, spec: BaseSpec, chosen: ladder.Ladder) -> ModelTooLarge:
        full = chosen.full
        reason = placement.refusal(full.need_mb, self._views(), self.budget_mb) or (
            f"needs {full.need_mb:.0f} MiB; {chosen.room_mb:.0f} MiB of the budget can ever be free")
        tried = [f"{r.placement} {r.need_mb:.0f} MiB" for r in chosen.rungs[1:]]
        if tried:
            reason += f"; the fit ladder tried {', '.join(tried)}"
        elif not spec.fit_rungs:
            reason += " (its fit ladder is off: set `fit` in models.yaml to allow a smaller context, offload or CPU)"
        return ModelTooLarge(f"model {spec.id} cannot fit: {reason}", param="model")

    # ---- leases ----------------------------------------------------------------------------

    async def acquire(self, spec: BaseSpec, keep_alive_s: float | None = None) -> Lease:
        """A lease on a loaded `spec`, loading it (and evicting or parking others) if needed."""
        if self.closing:
            raise ShuttingDown("the server is shutting down", retry_after_s=5)
        resident = self._residents.get(spec.id)
        if resident is not None and resident.has_slot and spec.id not in self._wanted:
            self._events.waited(spec.id, 0.0)  # every lease is observed, so wait percentiles are honest
            return self._lease(resident, keep_alive_s, 0.0)
        if spec.id not in self._wanted:
            self._ladders.pop(spec.id, None)  # its files may have changed since it was last planned
            self._check_parked(spec)
        if resident is None and spec.id not in self._parked:
            chosen = self.ladder(spec)
            if chosen.chosen is None:
                raise self._refuse(spec, chosen)
        # The bound is on requests waiting for loads; a ready model's own queue is its engine's backlog.
        behind_ready = resident is not None and resident.state is State.READY
        waiting = sum(1 for w in self._waiters if not self.is_resident(w.spec.id))
        if not behind_ready and waiting >= self._max_queue:
            raise QueueFull(f"{waiting} requests are already waiting for models; try again shortly",
                            retry_after_s=self._last_load_s)
        waiter = Waiter(spec, self._clock.now())
        if not behind_ready:
            waiter.away_since, waiter.was_away = waiter.arrived, True
        self._waiters.append(waiter)
        self._wanted[spec.id] = self._wanted.get(spec.id, 0) + 1
        self._events.queue(len(self._waiters))
        try:
            async with self._deadline(self._queue_timeout_s):
                return await self._wait_for(waiter, keep_alive_s)
        except TimeoutError:
            raise QueueTimeout(f"model {spec.id} did not become available within {self._queue_timeout_s:.0f}s",
                               retry_after_s=self._last_load_s) from None
        finally:
            self._waiters.remove(waiter)
            self._wanted[spec.id] -= 1
            if not self._wanted[spec.id]:
                del self._wanted[spec.id]
                self._drained_for.discard(spec.id)
            self._events.queue(len(self._waiters))
            self._notify()  # others may now plan around this model

    async def _wait_for(self, waiter: Waiter, keep_alive_s: float | None) -> Lease:
        spec = waiter.spec
        while True:
            if self.closing:
                raise ShuttingDown("the server is shutting down", retry_after_s=5)
            if waiter.error is not None:
                raise waiter.error
            changed = self._changed
            resident = self._residents.get(spec.id)
            if resident is not None and resident.state is State.READY:
                if resident.has_slot and self._first_waiter(spec.id) is waiter:
                    waited = self._clock.now() - waiter.arrived
                    self._events.waited(spec.id, waited)
                    self._events.waited_for(spec.id, waiter.reason if waiter.was_away else "busy", waited,
                                            waiter.swap_s)
                    return self._lease(resident, keep_alive_s, waited)
                await changed.wait()  # behind the requests its model is serving
                continue
            attempt = self._attempts.get(spec.id)
            if attempt is not None:
                await asyncio.shield(attempt)  # a failed load raises here, for every waiter
                continue
            self._admit()
            if spec.id in self._attempts or waiter.error is not None:
                continue
            await changed.wait()

    def _set_state(self, resident: Resident, state: State) -> None:
        """Change a model's state, and clock its waiters' time without it (their swap wait)."""
        resident.state = state
        self._events.changed()
        now = self._clock.now()
        for waiter in self._waiters:
            if waiter.spec.id != resident.id:
                continue
            if state is State.READY and waiter.away_since is not None:
                waiter.swap_s += now - waiter.away_since
                waiter.away_since = None
            elif state is not State.READY and waiter.away_since is None:
                waiter.away_since, waiter.was_away = now, True

    def _first_waiter(self, model: str) -> Waiter | None:
        """A model's waiters take its free slots in the order they came."""
        return next((w for w in self._waiters if w.spec.id == model), None)

    # ---- admission: who loads next ------------------------------------------------------------

    def _admit(self) -> None:
        """Ask admission what to do for the models requests wait for, and start doing it."""
        if self.closing or self._loading is not None:
            return
        groups = self._groups()
        if not groups:
            return
        decision = admission.decide(list(groups.values()), self._views(), self.budget_mb, self._clock.now(),
                                    self.max_wait_s)
        self._hold_until(decision.wake_at if decision.action == "hold" else None)
        if decision.action == "load":
            self._start_load(decision)
        elif decision.action in ("drain", "wait"):
            self._mark(decision.model, "drain")
            self._drained_for.add(decision.model)
            for model_id in decision.drain:
                victim = self._residents[model_id]
                self._set_state(victim, State.DRAINING)
                log.info("draining %s: requests for %s reached the aging bound", victim, decision.model)
        elif decision.action == "hold":
            for model_id in decision.held:
                self._mark(model_id, "queue")
        elif decision.action == "fail":
            error = ModelTooLarge(f"model {decision.model} cannot fit: {decision.reason}", param="model")
            for waiter in self._waiters:
                if waiter.spec.id == decision.model:
                    waiter.error = error
            self._notify()

    def _groups(self) -> dict[str, admission.Group]:
        """The requests waiting for models that are not on the device (nor being loaded). A group's
        age is its longest swap wait so far: time queued behind its own model's requests before that
        model left does not count against the aging bound."""
        groups: dict[str, admission.Group] = {}
        now = self._clock.now()
        for waiter in self._waiters:
            model = waiter.spec.id
            if model in self._residents or model in self._attempts or waiter.error is not None:
                continue
            away = waiter.swap_s + (now - waiter.away_since if waiter.away_since is not None else 0.0)
            group = groups.get(model)
            if group is None:
                need = self._need_of(waiter.spec, self.rung(waiter.spec))
                source = "ram" if model in self._parked else "disk"
                groups[model] = admission.Group(model, need, 1, now - away,
                                                self.expected_load_s(model, source, need),
                                                promised=model in self._drained_for)
            else:
                groups[model] = dataclasses.replace(group, waiting=group.waiting + 1, oldest=min(group.oldest, now - away))
        return groups

    def _mark(self, model: str | None, reason: str) -> None:
        for waiter in self._waiters:
            if waiter.spec.id == model and waiter.reason != "queue":  # held once: that is why it waited
                waiter.reason = reason

    def _hold_until(self, wake_at: float | None) -> None:
        """Decide again at an aging deadline, even if nothing else happens by then."""
        if wake_at == self._hold_at:
            return
        if self._hold is not None:
            self._hold.cancel()
        self._hold, self._hold_at = None, wake_at
        if wake_at is not None:
            self._hold = self._clock.call_later(max(0.0, wake_at - self._clock.now()), self._wake)

    def _wake(self) -> None:
        self._hold, self._hold_at = None, None
        self._notify()

    def _start_load(self, decision: admission.Decision) -> None:
        spec = next(w.spec for w in self._waiters if w.spec.id == decision.model)
        parked = self._parked.get(spec.id)
        rung = self.rung(spec)
        victims = [self._residents[model_id] for model_id in decision.evict]
        for victim in victims:
            self._begin_unload(victim)
        if decision.evict or spec.id in self._drained_for:
            reason = "aging" if spec.id in self._drained_for else decision.reason
            self.switches[reason] = self.switches.get(reason, 0) + 1
            self._events.switched(reason)
        self._drained_for.discard(spec.id)
        attempt = asyncio.get_running_loop().create_future()
        attempt.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved by waiters
        self._attempts[spec.id] = attempt
        self._loading, self._loading_since = spec.id, self._clock.now()
        resident = Resident(spec=spec, rung=rung, mb=self._need_of(spec, rung), keep_alive_s=spec.keep_alive,
                            source="ram" if parked else "disk", slots=rung.plan.parallel())
        self._spawn(self._load(resident, victims, attempt))

    def _views(self) -> list[placement.ResidentView]:
        return [
            placement.ResidentView(
                id=r.id,
                mb=r.mb,
                busy=r.refcount > 0 or r.state in (State.LOADING, State.UNLOADING),
                # Waiters about to lease it (it is loading, or has a free slot) protect it; a backlog
                # queued behind its full slots does not: it may be drained for an overdue model.
                wanted=r.id in self._wanted and (r.state is not State.READY or r.has_slot),
                pinned=self.pinned(r.spec),
                keep_alive_s=r.keep_alive_s,
                last_used=r.last_used,
                draining=r.state in (State.DRAINING, State.UNLOADING),  # its memory is on its way out
                drain_s=self._drain_s(r),
            )
            for r in self._residents.values()
        ]

    def _drain_s(self, resident: Resident) -> float:
        """How long draining it would take: as long as the longest of its recent leases, since one
        may have begun just before the drain (0 while it holds none)."""
        recent = self._lease_s.get(resident.id)
        return max(recent) if resident.leases and recent else 0.0

    def expected_load_s(self, model: str, source: str, need_mb: float) -> float:
        """The median of its recent loads from `source`; before any, a guess from its size."""
        seen = self._load_s.get((model, source))
        if seen:
            return statistics.median(seen)
        return 0.5 + need_mb / 4000 if source == "ram" else 1.0 + need_mb / 1500

    # ---- leases ----------------------------------------------------------------------------------

    def _lease(self, resident: Resident, keep_alive_s: float | None, waited_s: float) -> Lease:
        resident.refcount += 1
        resident.last_used = self._clock.now()
        resident.expires_at = None
        self._cancel_timer(resident)
        lease = Lease(self, resident, keep_alive_s, waited_s)
        self._lease_ids += 1
        lease.id = self._lease_ids
        resident.leases[lease.id] = resident.last_used
        return lease

    def _release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        resident = lease.resident
        resident.refcount -= 1
        now = self._clock.now()
        began = resident.leases.pop(lease.id, now)
        self._lease_s.setdefault(resident.id, deque(maxlen=16)).append(now - began)
        resident.last_used = now
        current = self._residents.get(resident.id) is resident
        if resident.refcount == 0 and current and resident.state in (State.READY, State.DRAINING):
            resident.keep_alive_s = resident.spec.keep_alive if lease.keep_alive_s is None else lease.keep_alive_s
            self._settle_release(resident)
        self._notify()

    def _settle_release(self, resident: Resident) -> None:
        decision = placement.after_release(
            draining=resident.state is State.DRAINING, unload_requested=resident.unload_requested,
            others_waiting=bool(self._waiters), pinned=self.pinned(resident.spec), keep_alive_s=resident.keep_alive_s)
        if decision.resume:
            self._set_state(resident, State.READY)
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

    async def _load(self, resident: Resident, victims: list[Resident], attempt: asyncio.Future) -> None:
        spec = resident.spec
        began = self._clock.now()
        parked = self._parked.get(spec.id) if resident.source == "ram" else None
        try:
            for victim in victims:
                await self._unload(victim, "capacity")
            resident.last_used = self._clock.now()
            self._residents[spec.id] = resident
            self._account(resident)
            self._events.placed(spec.id, resident.rung.name)
            log.info("loading %s at %s from %s: estimate %s, budget %.0f MiB", resident, resident.rung.placement,
                     resident.source, resident.estimate, self.budget_mb)
            began = self._clock.now()  # the swap-in itself: after the victims are gone
            worker = await self._start_worker(resident, parked)
            self._settle_load(resident, worker, began)
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
            if parked is not None:
                parked.in_use = False
            self._attempts.pop(spec.id, None)
            self._loading = None
            self._notify()

    async def _start_worker(self, resident: Resident, parked: Parked | None) -> Worker:
        """Start the worker from the warm copy when there is one (falling back to the disk if the
        copy will not load), else from the model's files."""
        spec = resident.spec
        if parked is not None:
            parked.in_use = True
            parked.last_used = self._clock.now()
            resident.fingerprint = parked.copy.fingerprint
            try:
                return await self._start(spec, parked.copy.plan)
            except ModelLoadTimeout:
                raise
            except Exception as exc:
                log.warning("%s did not load from its parked copy (%s); loading from disk", spec.id,
                            getattr(exc, "message", exc))
                parked.in_use = False
                self._drop_parked(spec.id)
                resident.source = "disk"
        if self._store is not None:
            resident.fingerprint = self._store.fingerprint(spec)
        return await self._start(spec, resident.rung.plan)

    async def _start(self, spec: BaseSpec, plan: LoadPlan) -> Worker:
        try:
            async with self._deadline(self._load_timeout_s):
                return await self._factory.start(plan)
        except TimeoutError:
            raise ModelLoadTimeout(f"model {spec.id} did not load within {self._load_timeout_s:.0f}s",
                                   retry_after_s=5) from None

    def _settle_load(self, resident: Resident, worker: Worker, began: float) -> None:
        spec, rung = resident.spec, resident.rung
        if rung.estimate.total_mb == 0:  # a CPU plan beside a GPU: its memory is host RAM
            measured, resident.host_mb = 0.0, worker.reported_mb
        else:
            measured = self._probe.measure(worker.pid, worker.reported_mb + rung.estimate.runtime_mb)
            if rung.estimate.total_mb:
                self._events.estimated(spec.backend, measured / rung.estimate.total_mb)
        key = (spec.id, rung.name)
        self._measured[key] = max(self._measured.get(key, 0.0), measured)
        self._ladders.pop(spec.id, None)  # climbed again with what this load measured
        resident.worker, resident.mb = worker, measured
        self._set_state(resident, State.READY)
        worker.on_exit(self._on_worker_exit)
        self._account(resident)
        self._settle_over_budget(resident)
        seconds = self._clock.now() - began
        self.loads += 1
        self._last_load_s = max(1.0, seconds)
        self._load_s.setdefault((spec.id, resident.source), deque(maxlen=8)).append(seconds)
        self._events.loaded(spec.id, "success", seconds)
        self._events.swapped_in(spec.id, resident.source, seconds)
        log.info("loaded %s from %s in %.2fs (estimated %.0f MiB)", resident, resident.source, seconds,
                 rung.estimate.total_mb)

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
        self._set_state(resident, State.UNLOADING)
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
            if reason in PARK_REASONS:
                await self._park(resident)
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
            self._publish_warm()
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

    # ---- the warm tier ------------------------------------------------------------------------

    async def _park(self, resident: Resident) -> None:
        """Keep an evicted model's weights in RAM when the warm tier has room for them."""
        parked = self._parked.get(resident.id)
        if parked is not None:  # it was resumed from its copy, which is still there: nothing to write
            parked.last_used = self._clock.now()
            return
        if self._store is None or resident.rung.plan.park_form == "none":
            return
        room = placement.ram_room(resident.rung.plan.warm_mb(), self._warm_views(), self.ram_budget_mb)
        if not room.park:
            log.info("not parking %s: %s", resident, room.reason)
            return
        for model_id in room.drop:
            self._drop_parked(model_id, "to park " + resident.id)
        began = self._clock.now()
        try:
            async with self._deadline(self._unload_timeout_s):
                copy = await self._store.park(resident.id, resident.rung.plan, resident.worker, resident.fingerprint)
        except Exception as exc:
            log.warning("could not park %s (%s): it is dropped", resident, getattr(exc, "message", None) or
                        f"{type(exc).__name__}: {exc}")
            return
        self._park_s.append(self._clock.now() - began)
        self._parked[resident.id] = Parked(copy, resident.rung, last_used=self._clock.now())
        for model_id in placement.ram_over_budget(resident.id, self._warm_views(), self.ram_budget_mb):
            self._drop_parked(model_id, "over the RAM budget")
        log.info("parked %s: %.0f MiB in %s (%s) in %.2fs", resident, copy.bytes / MIB, copy.form,
                 "locked" if copy.locked else "unlocked" if copy.form == "page_cache" else "tmpfs",
                 self._clock.now() - began)
        self._publish_warm()

    def _check_parked(self, spec: BaseSpec) -> None:
        """Drop a parked copy whose model's files have changed since (it is no longer the model), or
        whose rung no longer fits the budget left by pinned models (the ladder then climbs again)."""
        parked = self._parked.get(spec.id)
        if parked is None or parked.in_use or self._store is None:
            return
        if not self._store.fresh(parked.copy, spec):
            self._drop_parked(spec.id, "its files changed")
        elif self._need_of(spec, parked.rung) > self._room_mb(spec):
            self._drop_parked(spec.id, "its rung no longer fits the budget")

    def _drop_parked(self, model_id: str, why: str = "") -> None:
        parked = self._parked.pop(model_id, None)
        if parked is None:
            return
        log.info("dropping %s's parked copy (%.0f MiB)%s", model_id, parked.mb, f": {why}" if why else "")
        if self._store is not None:
            self._store.drop(parked.copy)
        self._publish_warm()

    def _warm_views(self) -> list[placement.WarmView]:
        return [placement.WarmView(model_id, p.mb, p.last_used, p.in_use) for model_id, p in self._parked.items()]

    def _publish_warm(self) -> None:
        parked = [m for m in self._parked if m not in self._residents]
        self._events.warm(len(parked), sum(p.mb for p in self._parked.values()))

    @property
    def parked_mb(self) -> float:
        return sum(p.mb for p in self._parked.values())

    def is_parked(self, model_id: str) -> bool:
        return model_id in self._parked and model_id not in self._residents

    # ---- admin, start-up and shutdown ---------------------------------------------------------

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

    def pinned(self, spec: BaseSpec) -> bool:
        """Pinned in models.yaml or by an admin: never evicted, no keep-alive expiry."""
        return spec.pinned or spec.id in self._pins

    def pin(self, spec: BaseSpec, pinned: bool) -> None:
        """Pin or unpin a model until the server stops. Pinning an absent model loads it, as a
        models.yaml pin does at start-up (ModelTooLarge if it can never fit); unpinning an idle one
        starts its keep-alive."""
        if spec.pinned and not pinned:
            raise ValueError(f"model {spec.id} is pinned in models.yaml")
        if pinned == self.pinned(spec):
            return
        resident = self._residents.get(spec.id)
        if pinned and resident is None and spec.id not in self._parked:
            chosen = self.ladder(spec)
            if chosen.chosen is None:
                raise self._refuse(spec, chosen)
        if pinned:
            self._pins.add(spec.id)
        else:
            self._pins.discard(spec.id)
        self._ladders.clear()  # every other model's room changed
        if pinned:
            if resident is None:
                self.preload(spec)
            else:
                resident.expires_at = None
                self._cancel_timer(resident)
        elif resident is not None and resident.state is State.READY and resident.refcount == 0:
            self._settle_release(resident)
        self._notify()

    async def unload(self, model_id: str) -> bool:
        """Admin unload: now if idle, else once its last lease ends; a parked copy is dropped too.
        False if neither resident nor parked. An admin's pin ends with it."""
        if model_id in self._pins:
            self._pins.discard(model_id)
            self._ladders.clear()
        had_copy = model_id in self._parked
        self._drop_parked(model_id, "unloaded by an admin")
        resident = self._residents.get(model_id)
        if resident is None or resident.state in (State.UNLOADING, State.LOADING):
            return had_copy
        if resident.refcount > 0:
            self._set_state(resident, State.DRAINING)
            resident.unload_requested = True
            return True
        await self._unload(resident, "admin")
        return True

    async def close(self) -> None:
        """Stop every worker and drop the warm tier (server shutdown)."""
        self.closing = True
        self._hold_until(None)
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
        for model_id in list(self._parked):
            self._drop_parked(model_id)
        if self._store is not None:
            self._store.close()

    # ---- the dry-run plan ------------------------------------------------------------------------

    def dry_run(self, spec: BaseSpec) -> dict[str, Any]:
        """What a request for `spec` would lead to now, decided by the very functions a real one
        goes through (the ladder, placement, admission, the warm tier's room), changing nothing."""
        now = self._clock.now()
        full = self.ladder(spec, every_rung=True)
        resident, parked = self._residents.get(spec.id), self._parked.get(spec.id)
        rung = resident.rung if resident else parked.rung if parked else full.chosen
        source = "ram" if parked else "disk"
        state = resident.state.value if resident else "parked" if parked else "absent"
        report: dict[str, Any] = {
            "model": spec.id, "backend": spec.backend, "state": state, "source": source,
            "budget_mb": self.budget_mb, "used_mb": round(self.used_mb, 1), "room_mb": round(full.room_mb, 1),
            "ram_budget_mb": self.ram_budget_mb, "parked_mb": round(self.parked_mb, 1),
            "ladder": [r.describe() for r in full.rungs],
        }
        if rung is None:
            report.update(verdict="never", fits_now=False, reason=self._refuse(spec, full).message)
            return report
        below = full.below(rung) if rung in full.rungs else None
        report.update(rung=rung.name, placement=rung.placement, estimate=rung.estimate.breakdown(),
                      need_mb=round(self._need_of(spec, rung), 1), rung_below=below.describe() if below else None)
        if resident is not None and resident.state is State.READY:
            queued = self._wanted.get(spec.id, 0)
            busy = not resident.has_slot or queued
            report.update(verdict="resident", fits_now=True, evict=[], park=[], drop=[], drain=[], queued=queued,
                          expected_wait_s=round(self._drain_s(resident) * (1 + queued // (resident.slots or 1))
                                                if busy else 0.0, 3))
            return report
        views = self._views()
        groups = self._groups()
        mine = groups.get(spec.id)
        need = self._need_of(spec, rung)
        groups[spec.id] = dataclasses.replace(mine, waiting=mine.waiting + 1) if mine else admission.Group(
            spec.id, need, 1, now, self.expected_load_s(spec.id, source, need))
        fit = placement.plan(need, views, self.budget_mb)
        decision = admission.decide(list(groups.values()), views, self.budget_mb, now, self.max_wait_s)
        park, drop = self._eviction_fates(fit.evict)
        unload_s = statistics.median(self._park_s) if self._park_s and park else 0.5
        report.update(
            verdict=fit.verdict.value if not fit.evict else "evict",
            fits_now=fit.verdict is placement.Verdict.FITS and not fit.evict,
            evict=list(fit.evict), park=park, drop=drop, drain=list(fit.drain),
            admission={"action": decision.action, "model": decision.model, "reason": decision.reason,
                       "held": list(decision.held),
                       "wake_in_s": None if decision.wake_at is None else round(max(0.0, decision.wake_at - now), 3)},
            expected_wait_s=round(admission.expected_wait(decision, spec.id, views, now=now,
                                                          load_s=groups[spec.id].load_s, unload_s=unload_s), 3),
            expected_load_s=round(groups[spec.id].load_s, 3),
            load_seen=bool(self._load_s.get((spec.id, source))),
        )
        if fit.verdict is placement.Verdict.NEVER:
            report["reason"] = fit.reason
        return report

    def _eviction_fates(self, evict: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """Which of the models an eviction would take off the device park, and which are dropped
        (models already parked keep their copy), as _park would decide one after another."""
        warm = self._warm_views()
        park: list[str] = []
        drop: list[str] = []
        for model_id in evict:
            if model_id in self._parked:
                park.append(model_id)
                continue
            plan = self._residents[model_id].rung.plan
            room = placement.ram_room(plan.warm_mb(), warm, self.ram_budget_mb)
            if self._store is None or plan.park_form == "none" or not room.park:
                drop.append(model_id)
                continue
            park.append(model_id)
            warm = [w for w in warm if w.id not in room.drop] + [placement.WarmView(model_id, plan.warm_mb(), 0.0)]
            drop.extend(f"{gone} (parked copy)" for gone in room.drop)
        return park, drop

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
        self._publish_warm()  # a model back on the device no longer counts as parked

    def _publish_memory(self) -> None:
        self._events.memory(self._ledger.used_mb, self.budget_mb, dict(self._ledger.reserved))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._events.changed()

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
        return len(self._waiters)

    def is_resident(self, model_id: str) -> bool:
        resident = self._residents.get(model_id)
        return resident is not None and resident.state is State.READY

    def status(self, model_id: str) -> str:
        """resident | loading | draining | unloading | parked | unloaded"""
        resident = self._residents.get(model_id)
        if resident is not None:
            return "resident" if resident.state is State.READY else resident.state.value
        return "parked" if model_id in self._parked else "unloaded"

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
            "ram_budget_mb": self.ram_budget_mb,
            "parked_mb": round(self.parked_mb, 1),
            "max_wait_s": self.max_wait_s,
            "waiting": self.waiting,
            "wanted": sorted(self._wanted),  # models requests are waiting for
            "loading": self.loading(),
            "loads": self.loads,
            "evictions": dict(self.evictions),
            "switches": dict(self.switches),
            "queues": dict(self._wanted),  # requests waiting per model, whether it is on the device or not
            "residents": [
                {
                    "model": r.id,
                    "backend": r.spec.backend,
                    "state": r.state.value,
                    "memory_mb": round(r.mb, 1),
                    "host_mb": round(r.host_mb, 1),
                    "estimate": r.estimate.breakdown(),
                    "placement": r.rung.placement,
                    "rung": r.rung.name,
                    "source": r.source,
                    "warm_mb": round(self._parked[r.id].mb, 1) if r.id in self._parked else None,
                    "pid": r.worker.pid if r.worker else None,
                    "refcount": r.refcount,
                    "slots": r.slots,
                    "queued": self._wanted.get(r.id, 0) if r.state is State.READY else 0,
                    "pinned": self.pinned(r.spec),
                    "keep_alive_s": -1 if r.keep_alive_s == FOREVER else r.keep_alive_s,  # models.yaml's spelling
                    "expires_in_s": None if r.expires_at is None else round(max(0.0, r.expires_at - now), 3),
                }
                for r in self._residents.values()
            ],
            "parked": [
                {
                    "model": model_id,
                    "backend": p.rung.plan.backend,
                    "state": "parked",
                    "memory_mb": round(p.mb, 1),
                    "form": p.copy.form,
                    "locked": p.copy.locked,
                    "placement": p.rung.placement,
                    "device_mb": round(p.rung.need_mb, 1),
                    "idle_s": round(now - p.last_used, 3),
                }
                for model_id, p in self._parked.items() if model_id not in self._residents
            ],
        }
