"""The fit ladder: a model too large for the budget as configured takes the first rung that fits.

Rungs, in order and only as the model's `fit` allows (backends/spec.py; on by default for GGUF):
a smaller context down to `min_context`; part of the model off the device (GGUF layers split by
the file's per-layer sizes, diffusers model CPU offload); a lighter compute type (Whisper); and
finally the CPU. Each rung is a different LoadPlan made by the engine's spec (`fitted`), so the
worker is given exactly the rung's decisions: what the ladder chose is what loads.

Pure given the spec's file facts (its resolve() reads headers): the arbiter acts on `climb`, and
the dry-run plan shows the same ladder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backends.plan import Device, LoadPlan, MemoryEstimate
from backends.spec import BaseSpec
from server import placement

FULL = "full"


@dataclass(frozen=True)
class Rung:
    name: str  # "full" (as configured) or a backends.spec.RUNGS entry
    detail: str  # what the rung changed: "n_ctx=2048", "n_gpu_layers=20/33"
    plan: LoadPlan
    estimate: MemoryEstimate  # as the device budget sees it
    need_mb: float  # what a load of it is charged (the estimate, raised by hints and measurements)
    fits: bool

    @property
    def placement(self) -> str:
        """The rung as the x-modelyard-placement header, /admin/ps and /v1/models show it."""
        return f"{self.name}; {self.detail}" if self.detail else self.name

    def describe(self) -> dict:
        return {"rung": self.name, "detail": self.detail, "placement": self.placement, "device": self.plan.device,
                "context_length": self.plan.context_length, "need_mb": round(self.need_mb, 1), "fits": self.fits,
                "estimate": self.estimate.breakdown()}


@dataclass(frozen=True)
class Ladder:
    room_mb: float  # the device memory the model may ever have: the budget less the pinned models
    rungs: tuple[Rung, ...]  # in the order tried

    @property
    def chosen(self) -> Rung | None:
        return next((r for r in self.rungs if r.fits), None)

    @property
    def full(self) -> Rung:
        return self.rungs[0]

    def below(self, rung: Rung) -> Rung | None:
        """The rung after `rung` (what the model would take with less room)."""
        index = self.rungs.index(rung)
        return self.rungs[index + 1] if index + 1 < len(self.rungs) else None


def climb(spec: BaseSpec, device: Device, room_mb: float, need: Callable[[str, MemoryEstimate], float],
          *, every_rung: bool = False) -> Ladder:
    """The ladder for `spec` with `room_mb` of the device: the configured plan, then each rung the
    model allows, each starting from the one above; it stops at the first that fits unless
    `every_rung` (the dry-run plan shows them all). `need(rung, estimate)` is what a load of that
    rung would be charged (the arbiter raises estimates by hints and past measurements)."""
    plan = spec.resolve(device)
    rungs = [_rung(FULL, "", plan, device, room_mb, need)]
    for name in spec.fit_rungs:
        if rungs[-1].fits and not every_rung:
            break
        fitted = spec.fitted(rungs[-1].plan, name, room_mb, device)
        if fitted is None:
            continue
        rungs.append(_rung(name, spec.rung_detail(name, fitted), fitted, device, room_mb, need))
    return Ladder(room_mb, tuple(rungs))


def _rung(name: str, detail: str, plan: LoadPlan, device: Device, room_mb: float,
          need: Callable[[str, MemoryEstimate], float]) -> Rung:
    estimate = placement.device_mb(plan.estimate(), plan.device, device.kind)
    charged = need(name, estimate)
    return Rung(name, detail, plan, estimate, charged, charged <= room_mb)
