"""Pure placement policy: does a model fit, which residents make room, what a release leads to,
and what an evicted model's warm copy displaces in RAM.

No I/O, no clock: the arbiter (arbiter.py) asks, and carries out the answer; the dry-run plan
(/admin/plan) asks the very same functions. Which waiting model is admitted next is admission.py;
which rung of the fit ladder a model takes is ladder.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from backends.plan import MemoryEstimate
from backends.spec import FOREVER


@dataclass(frozen=True)
class ResidentView:
    """What the policy needs to know about a model in memory (or on its way in)."""

    id: str
    mb: float
    busy: bool = False  # holds leases, or is loading/unloading
    wanted: bool = False  # requests are waiting to lease it: neither idle nor a drain victim
    pinned: bool = False
    keep_alive_s: float = 300.0  # configured idle time; FOREVER never expires
    last_used: float = 0.0
    draining: bool = False
    drain_s: float = 0.0  # expected time until its leases end (admission's aging deadline allows for it)


class Verdict(Enum):
    FITS = "fits"  # load now, after evicting `evict` (all idle)
    DRAIN = "drain"  # mark `drain` as draining and wait for their leases to end
    WAIT = "wait"  # nothing to do but wait for leases to end
    NEVER = "never"  # cannot fit even with every evictable model gone


@dataclass(frozen=True)
class Plan:
    verdict: Verdict
    evict: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()
    reason: str = ""


def expected_mb(estimate: MemoryEstimate, hint_mb: float | None, measured_mb: float) -> float:
    """What a load is expected to take: the estimate (no less than models.yaml's memory_mb hint
    for the model itself), never below what a load of it measured."""
    static = max(estimate.model_mb, hint_mb or 0.0) + estimate.runtime_mb
    return max(static, measured_mb)


def device_mb(estimate: MemoryEstimate, plan_device: str, machine_device: str) -> MemoryEstimate:
    """The estimate as the device budget sees it: a CPU plan on a machine with a GPU takes no device
    memory (its footprint is all host RAM)."""
    return estimate.on_host() if plan_device == "cpu" and machine_device != "cpu" else estimate


def eviction_order(residents: list[ResidentView]) -> list[ResidentView]:
    """Draining models first, then the shortest keep-alive, then least recently used."""
    return sorted(residents, key=lambda r: (not r.draining, r.keep_alive_s, r.last_used))


def refusal(need_mb: float, residents: list[ResidentView], budget_mb: float) -> str | None:
    """Why `need_mb` can never fit, whatever is evicted; None if it can."""
    if need_mb > budget_mb:
        return f"needs {need_mb:.0f} MiB; the whole budget is {budget_mb:.0f} MiB"
    pinned = sum(r.mb for r in residents if r.pinned)
    if need_mb > budget_mb - pinned:
        return f"needs {need_mb:.0f} MiB; pinned models hold {pinned:.0f} of the {budget_mb:.0f} MiB budget"
    return None


def plan(need_mb: float, residents: list[ResidentView], budget_mb: float) -> Plan:
    """How to make `need_mb` fit next to `residents` within `budget_mb`."""
    reason = refusal(need_mb, residents, budget_mb)
    if reason:
        return Plan(Verdict.NEVER, reason=reason)
    free = budget_mb - sum(r.mb for r in residents)
    if need_mb <= free:
        return Plan(Verdict.FITS)
    movable = [r for r in residents if not r.pinned]
    idle = eviction_order([r for r in movable if not r.busy and not r.wanted])
    evict: list[str] = []
    for resident in idle:
        if need_mb <= free:
            break
        evict.append(resident.id)
        free += resident.mb
    if need_mb <= free:
        return Plan(Verdict.FITS, evict=tuple(evict))
    # Only busy models stand in the way: drain as few as make room, once their leases end.
    free += sum(r.mb for r in movable if r.busy and r.draining)
    drain: list[str] = []
    for resident in eviction_order([r for r in movable if r.busy and not r.draining and not r.wanted]):
        if need_mb <= free:
            break
        drain.append(resident.id)
        free += resident.mb
    if drain:
        return Plan(Verdict.DRAIN, drain=tuple(drain))
    return Plan(Verdict.WAIT, reason="waiting for busy models to finish")


def over_budget_victims(loaded: str, residents: list[ResidentView], budget_mb: float) -> tuple[tuple[str, ...], float]:
    """A load measured above its estimate may push the total over the budget: the idle models to
    evict to get back under, and by how much the budget stays exceeded if they do not suffice."""
    over = sum(r.mb for r in residents) - budget_mb
    victims: list[str] = []
    idle = [r for r in residents if r.id != loaded and not r.busy and not r.pinned]
    for resident in eviction_order(idle):
        if over <= 0:
            break
        victims.append(resident.id)
        over -= resident.mb
    return tuple(victims), max(over, 0.0)


@dataclass(frozen=True)
class Release:
    """What happens to a model when its last lease ends."""

    resume: bool = False  # a draining model whose reason to drain has gone serves again
    unload: str | None = None  # unload now, for this reason
    expire_in_s: float | None = None  # unload after this long idle


def after_release(*, draining: bool, unload_requested: bool, others_waiting: bool, pinned: bool,
                  keep_alive_s: float) -> Release:
    """The last lease on a model ended; `keep_alive_s` is the request's or else the model's."""
    if draining:
        if unload_requested:
            return Release(unload="admin")
        if others_waiting:
            return Release(unload="drained")
    resume = draining  # whoever wanted the room has gone
    if pinned or keep_alive_s == FOREVER:
        return Release(resume=resume)
    if keep_alive_s <= 0:
        return Release(resume=resume, unload="keep_alive")
    return Release(resume=resume, expire_in_s=keep_alive_s)


# ---- the warm tier: parked copies in system RAM ------------------------------------------------


@dataclass(frozen=True)
class WarmView:
    """A parked copy, as the policy sees it."""

    id: str
    mb: float
    last_used: float = 0.0
    in_use: bool = False  # a load is reading it right now


@dataclass(frozen=True)
class RamRoom:
    park: bool  # park the evicted model (else drop it)
    drop: tuple[str, ...] = ()  # parked copies to drop first, least recently used first
    reason: str = ""


def ram_room(need_mb: float, warm: list[WarmView], ram_budget_mb: float) -> RamRoom:
    """Whether an evicted model needing `need_mb` of RAM parks, and which parked copies make room
    for it (least recently used first); a copy a load is reading is never dropped."""
    if ram_budget_mb <= 0:
        return RamRoom(False, reason="the warm tier is off (ram budget 0)")
    if need_mb > ram_budget_mb:
        return RamRoom(False, reason=f"needs {need_mb:.0f} MiB of RAM; the warm tier's budget is {ram_budget_mb:.0f} MiB")
    free = ram_budget_mb - sum(w.mb for w in warm)
    drop: list[str] = []
    for copy in sorted((w for w in warm if not w.in_use), key=lambda w: w.last_used):
        if need_mb <= free:
            break
        drop.append(copy.id)
        free += copy.mb
    if need_mb > free:
        return RamRoom(False, reason="parked copies being loaded hold the rest of the warm tier")
    return RamRoom(True, tuple(drop))


def ram_over_budget(keep: str, warm: list[WarmView], ram_budget_mb: float) -> tuple[str, ...]:
    """A park wrote more than estimated: the least recently used copies (never `keep`, never one in
    use) to drop to get back under the RAM budget."""
    over = sum(w.mb for w in warm) - ram_budget_mb
    drop: list[str] = []
    for copy in sorted((w for w in warm if w.id != keep and not w.in_use), key=lambda w: w.last_used):
        if over <= 0:
            break
        drop.append(copy.id)
        over -= copy.mb
    return tuple(drop)


@dataclass
class Ledger:
    """Accounted memory, kept by the arbiter and checked against the budget on every change."""

    budget_mb: float
    reserved: dict[str, float] = field(default_factory=dict)
    peak_mb: float = 0.0

    @property
    def used_mb(self) -> float:
        return sum(self.reserved.values())

    def set(self, model_id: str, mb: float) -> None:
        self.reserved[model_id] = mb
        self.peak_mb = max(self.peak_mb, self.used_mb)

    def drop(self, model_id: str) -> None:
        self.reserved.pop(model_id, None)
