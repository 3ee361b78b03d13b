"""Pure admission policy: which waiting model loads next, and when a busy model must give way.

Swapping in arrival order makes requests for two models that cannot be resident together
ping-pong the card: A-B-A-B arrivals cost four swaps. Instead, a resident model keeps serving its
own requests (new arrivals included) while others wait; when the device frees up, the model with
the most waiting requests goes next; and an aging bound (max_wait_s) caps how long any request
defers: once a waiter would otherwise miss it, the busy models in its way drain and it goes first.

No I/O, no clock: the arbiter (arbiter.py) passes `now` and carries the decision out; the
dry-run plan (/admin/plan) asks the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from server import placement
from server.placement import ResidentView, Verdict


@dataclass(frozen=True)
class Group:
    """The requests waiting for one model that is not on the device."""

    model: str
    need_mb: float
    waiting: int
    oldest: float  # when its longest-waiting request began waiting for the model
    load_s: float = 0.0  # how long its load is expected to take (from RAM or from disk)
    promised: bool = False  # busy models were drained for it: it stays first until it loads


Action = Literal["load", "drain", "wait", "hold", "fail", "none"]


@dataclass(frozen=True)
class Decision:
    action: Action
    model: str | None = None  # the group acted for (load, drain, wait, fail)
    evict: tuple[str, ...] = ()  # load: idle models to evict first
    drain: tuple[str, ...] = ()  # drain: busy models to stop leasing
    reason: str = ""  # load: "free" (nothing evicted), "idle", "aging"; fail: why
    held: tuple[str, ...] = ()  # models whose waiters defer to the resident models' work
    wake_at: float | None = None  # decide again then (the earliest aging deadline among the held)


# Loads and drains are estimates: a tenth of the bound is kept in hand for them to run long.
SLACK = 0.1


def deadline(group: Group, residents: list[ResidentView], max_wait_s: float) -> float:
    """When the group must be switched to for its oldest request to be served within max_wait_s:
    its arrival plus the bound (less the slack), less its expected load and the longest expected
    drain of a busy model."""
    drain = max((r.drain_s for r in residents if r.busy), default=0.0)
    return group.oldest + max(0.0, max_wait_s * (1 - SLACK) - group.load_s - drain)


def overdue(group: Group, residents: list[ResidentView], now: float, max_wait_s: float) -> bool:
    return group.promised or deadline(group, residents, max_wait_s) <= now


def order(groups: list[Group], residents: list[ResidentView], now: float, max_wait_s: float) -> list[Group]:
    """A group busy models were drained for first, then overdue ones (earliest deadline first), then
    the most waiting requests, then the oldest."""

    def key(group: Group) -> tuple:
        if overdue(group, residents, now, max_wait_s):
            return (0 if group.promised else 1, deadline(group, residents, max_wait_s), 0, group.oldest)
        return (2, 0.0, -group.waiting, group.oldest)

    return sorted(groups, key=key)


def decide(groups: list[Group], residents: list[ResidentView], budget_mb: float, now: float,
           max_wait_s: float) -> Decision:
    """What to do for the waiting `groups` next (one load at a time)."""
    held: list[Group] = []
    for group in order(groups, residents, now, max_wait_s):
        late = overdue(group, residents, now, max_wait_s)
        fit = placement.plan(group.need_mb, residents, budget_mb)
        if fit.verdict is Verdict.NEVER:
            return Decision("fail", group.model, reason=fit.reason)
        if fit.verdict is Verdict.FITS:
            reason = "free" if not fit.evict else ("aging" if late else "idle")
            return Decision("load", group.model, evict=fit.evict, reason=reason)
        if late:
            # Strict priority from here: nothing else may take the room this group is waiting for.
            if fit.verdict is Verdict.DRAIN:
                return Decision("drain", group.model, drain=fit.drain, reason="aging")
            return Decision("wait", group.model, reason=fit.reason)
        held.append(group)
    if not held:
        return Decision("none")
    wake = min(deadline(g, residents, max_wait_s) for g in held)
    return Decision("hold", held=tuple(g.model for g in held), wake_at=wake)


def expected_wait(decision: Decision, model: str, residents: list[ResidentView], *, now: float, load_s: float,
                  unload_s: float) -> float:
    """Seconds until a request for `model` would hold a lease, if `decision` is what admission
    does about it now: victims unloaded (or parked), busy models drained, held until its deadline,
    then its load."""
    if decision.action == "load" and decision.model == model:
        return (unload_s if decision.evict else 0.0) + load_s
    drains = max((r.drain_s for r in residents if r.busy), default=0.0)
    if decision.action in ("drain", "wait") and decision.model == model:
        return drains + unload_s + load_s
    if decision.action == "hold" and model in decision.held:
        held_for = max(0.0, (decision.wake_at or now) - now)
        return held_for + drains + unload_s + load_s
    # Another model goes first: at least its turn, then ours.
    return drains + 2 * (unload_s + load_s)
