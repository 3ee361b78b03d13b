"""Would a model fit, before it is downloaded or loaded: the engine's own plan and estimate, placed
by the arbiter's own policy against what a running server holds (or the bare budget).

The estimate is `spec.resolve(device).estimate()`, the arbiter's code path; `pull` feeds it files
that hold the remote repository's real headers and sizes and no weights (server/hub.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from backends.plan import Device, MemoryEstimate
from backends.spec import FOREVER, BaseSpec
from server import placement
from server.memory import MemoryProbe, default_budget_mb, detect_device
from server.settings import Settings


@dataclass(frozen=True)
class Room:
    """The memory a new model would be placed in."""

    budget_mb: float
    device: Device
    residents: tuple[placement.ResidentView, ...] = ()
    source: str = "budget"  # "server" when a running server said what it holds

    @classmethod
    def of(cls, settings: Settings, snapshot: dict[str, Any] | None) -> Room:
        probe = MemoryProbe()
        device = detect_device(probe, settings.worker_overhead_mb)
        if snapshot is None:
            return cls(float(settings.budget_mb or default_budget_mb(probe)), device)
        return cls(float(snapshot["budget_mb"]), device, tuple(_view(r) for r in snapshot["residents"]), "server")


@dataclass(frozen=True)
class Forecast:
    estimate: MemoryEstimate
    need_mb: float
    verdict: str  # "fits", "evicts", "waits", "too_large"
    evict: tuple[str, ...] = ()
    reason: str = ""

    def describe(self, room: Room) -> str:
        where = ("what the running server holds" if room.source == "server" else
                 "the budget (no server is running to ask what is loaded)")
        head = f"estimate {self.estimate} on {room.device.kind}; budget {room.budget_mb:.0f} MiB, against {where}"
        if self.verdict == "fits":
            return f"{head}\nplan: fits now"
        if self.verdict == "evicts":
            return f"{head}\nplan: fits after evicting {', '.join(self.evict)} (idle)"
        if self.verdict == "waits":
            return f"{head}\nplan: fits once {', '.join(self.evict) or 'busy models'} finish serving and unload"
        return (f"{head}\nplan: does not fit: {self.reason}; it needs the fit ladder (a smaller context, "
                "layers left on the CPU) or a smaller quantization")


def forecast(spec: BaseSpec, room: Room) -> Forecast:
    estimate = spec.resolve(room.device).estimate()
    need = placement.expected_mb(estimate, spec.memory_mb, 0.0)
    decision = placement.plan(need, list(room.residents), room.budget_mb)
    if decision.verdict is placement.Verdict.NEVER:
        return Forecast(estimate, need, "too_large", reason=decision.reason)
    if decision.verdict is placement.Verdict.FITS:
        return Forecast(estimate, need, "evicts" if decision.evict else "fits", decision.evict)
    return Forecast(estimate, need, "waits", decision.drain)


def server_snapshot(settings: Settings) -> dict[str, Any] | None:
    """What a running modelyard holds (GET /admin/ps), or None if none answers."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}"} if settings.api_keys else {}
    try:
        response = httpx.get(f"http://{host}:{settings.port}/admin/ps", headers=headers, timeout=2)
        snapshot = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    # something else may listen on that port
    return snapshot if isinstance(snapshot, dict) and {"budget_mb", "residents"} <= snapshot.keys() else None


def _view(resident: dict[str, Any]) -> placement.ResidentView:
    keep = resident.get("keep_alive_s", 300.0)
    return placement.ResidentView(
        id=resident["model"], mb=float(resident["memory_mb"]),
        busy=bool(resident.get("refcount")) or resident.get("state") in ("loading", "unloading"),
        pinned=bool(resident.get("pinned")), keep_alive_s=FOREVER if keep == -1 else float(keep),
        draining=resident.get("state") in ("draining", "unloading"))
