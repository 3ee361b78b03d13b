"""Pure placement policy: does a model fit, and which residents make room. No I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

FOREVER = float("inf")


@dataclass(frozen=True)
class Resident:
    """What the policy needs to know about a model in memory (or on its way in)."""

    id: str
    mb: float
    busy: bool = False  # holds leases, or is loading/unloading
    wanted: bool = False  # requests are waiting to lease it: neither idle nor a drain victim
    pinned: bool = False
    keep_alive_s: float = 300.0  # configured idle time; FOREVER for -1
    last_used: float = 0.0
    draining: bool = False


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


def eviction_order(residents: list[Resident]) -> list[Resident]:
    """Draining models first, then the shortest keep-alive, then least recently used."""
    return sorted(residents, key=lambda r: (not r.draining, r.keep_alive_s, r.last_used))


def plan(need_mb: float, residents: list[Resident], budget_mb: float) -> Plan:
    """How to make `need_mb` fit next to `residents` within `budget_mb`."""
    if need_mb > budget_mb:
        return Plan(Verdict.NEVER, reason=f"needs {need_mb:.0f} MiB; the whole budget is {budget_mb:.0f} MiB")
    pinned = sum(r.mb for r in residents if r.pinned)
    if need_mb > budget_mb - pinned:
        return Plan(
            Verdict.NEVER,
            reason=f"needs {need_mb:.0f} MiB; pinned models hold {pinned:.0f} of the {budget_mb:.0f} MiB budget",
        )
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
    already = sum(r.mb for r in movable if r.busy and r.draining)
    free += already
    drain: list[str] = []
    for resident in eviction_order([r for r in movable if r.busy and not r.draining and not r.wanted]):
        if need_mb <= free:
            break
        drain.append(resident.id)
        free += resident.mb
    if drain:
        return Plan(Verdict.DRAIN, drain=tuple(drain))
    return Plan(Verdict.WAIT, reason="waiting for busy models to finish")


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
