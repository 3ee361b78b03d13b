"""What every engine's models.yaml entry shares, and keep-alive durations.

An engine package's `spec.py` subclasses BaseSpec with its `backend`, its `options` model (the one
place its defaults live) and `resolve(device)`, which makes the engine's LoadPlan (plan.py). It
imports no engine (torch, llama_cpp, ctranslate2), so the HTTP process plans memory with it
without loading anything.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backends.capability import Capability
from backends.plan import Device, LoadPlan, LoraAdapter

FOREVER = math.inf  # a keep-alive that never expires (-1 in models.yaml and requests)
MAX_KEEP_ALIVE_S = 10**9  # ~31 years; longer is what -1 (forever) is for

# The fit ladder's rungs, in the order they are tried on a model too large for the budget as
# configured (server/ladder.py). Each applies on top of the one before it, as llama.cpp's --fit
# does: a smaller context first, then part of the model off the device, a lighter compute type,
# and finally the whole model on the CPU.
Rung = Literal["context", "offload", "compute", "cpu"]
RUNGS: tuple[Rung, ...] = ("context", "offload", "compute", "cpu")

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_keep_alive(value: Any) -> float:
    """Seconds from 300, "300", "5m", "1h", "-1"; any negative means FOREVER."""
    if isinstance(value, bool) or value is None:
        raise ValueError("keep_alive must be seconds or a duration like '5m'")
    if isinstance(value, int) and abs(value) > MAX_KEEP_ALIVE_S:  # before float(): 10**400 overflows it
        raise ValueError(f"keep_alive must be at most {MAX_KEEP_ALIVE_S} seconds (-1 keeps the model loaded)")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"keep_alive {value!r} is not seconds or a duration like '5m'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds > MAX_KEEP_ALIVE_S:
        raise ValueError(f"keep_alive must be at most {MAX_KEEP_ALIVE_S} seconds (-1 keeps the model loaded)")
    return FOREVER if seconds < 0 else seconds


class AdapterEntry(BaseModel):
    """One LoRA adapter of a model (models.yaml `adapters:`), served as the model id `<model>:<name>`
    (and its aliases) by the base's own worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@+-]+$")
    path: Path
    scale: float = Field(1.0, gt=0, le=16, description="Multiplies the adapter's own alpha/rank scaling.")
    aliases: tuple[str, ...] = ()


class BaseSpec(BaseModel):
    """One models.yaml entry; each engine adds `backend: Literal[...]`, its `options` and `resolve`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:/@+-]+$")
    backend: str
    aliases: tuple[str, ...] = ()
    keep_alive: float = Field(300.0, description="Seconds idle before unloading; -1 forever, 0 at once.")
    pinned: bool = False
    memory_mb: int | None = Field(None, ge=1, description="Hint: the footprint if known (a floor on the estimate).")
    context_length: int | None = Field(None, ge=16, description="Context window; the engine's default if absent.")
    fit: tuple[Rung, ...] | None = Field(
        None, description="Fit-ladder rungs this model may take when it does not fit the budget as configured "
        "(context, offload, compute, cpu); default: the engine's (GGUF: context, offload, cpu; others: none).")
    min_context: int = Field(2048, ge=16, description="The smallest context the `context` rung may shrink to.")
    adapters: tuple[AdapterEntry, ...] = Field((), description="LoRA adapters served beside this model.")
    description: str = ""

    supported_fit: ClassVar[frozenset[str]] = frozenset({"context", "cpu"})
    default_fit: ClassVar[tuple[Rung, ...]] = ()
    takes_adapters: ClassVar[bool] = False  # engines that attach LoRA adapters to a loaded model

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> float:
        return parse_keep_alive(value)

    @model_validator(mode="after")
    def _fit_supported(self) -> BaseSpec:
        unsupported = sorted(set(self.fit or ()) - self.supported_fit)
        if unsupported:
            raise ValueError(f"fit: {', '.join(unsupported)} is not a rung {self.backend} models can take "
                             f"(they can take: {', '.join(sorted(self.supported_fit))})")
        return self

    @model_validator(mode="after")
    def _adapters_valid(self) -> BaseSpec:
        if self.adapters and not self.takes_adapters:
            raise ValueError(f"{self.backend} models take no LoRA adapters (gguf and hf text models do)")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError("adapter names must be unique within a model")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def adapter_names(self, adapter: AdapterEntry) -> tuple[str, ...]:
        """The model ids an adapter is requested by: `<model>:<name>`, then its aliases."""
        return (f"{self.id}:{adapter.name}", *adapter.aliases)

    def lora_plans(self, weight_bytes) -> tuple[LoraAdapter, ...]:
        """The adapters as plans carry them, each sized by `weight_bytes(path)` (0 when unreadable)."""
        return tuple(LoraAdapter(name=a.name, path=a.path, scale=a.scale, bytes=weight_bytes(a.path))
                     for a in self.adapters)

    @property
    def fit_rungs(self) -> tuple[Rung, ...]:
        """The rungs this model may take, in ladder order."""
        allowed = set(self.default_fit if self.fit is None else self.fit)
        return tuple(rung for rung in RUNGS if rung in allowed)

    @property
    def capabilities(self) -> frozenset[Capability]:
        raise NotImplementedError

    def files(self) -> Iterable[Path]:
        """Model files this spec reads (adapters' included); they must lie inside the allowed directories."""
        return tuple(a.path for a in self.adapters)

    def resolve(self, device: Device) -> LoadPlan:
        """Every load-time decision for this model on `device`. Reads file headers, never weights,
        and never raises for an unreadable file: the load reports that."""
        raise NotImplementedError

    def fitted(self, plan: LoadPlan, rung: Rung, room_mb: float, device: Device) -> LoadPlan | None:
        """`plan` (the rung above's) taken down `rung` to approach `room_mb` of device memory; None
        where the rung does not apply. Whether the result fits is the ladder's question."""
        if rung == "context":
            return shrink_context(plan, self.min_context, room_mb)
        if rung == "cpu" and device.kind != "cpu":
            return self.resolve(Device(kind="cpu", runtime_mb=0.0))
        return None

    def rung_detail(self, rung: str, plan: LoadPlan) -> str:
        """What a rung changed, for the placement header and plans ("n_ctx=2048")."""
        return f"n_ctx={plan.context_length}" if rung == "context" else ""

    def base_plan(self, device: Device, *, context_length: int | None, on: Literal["cpu", "cuda"] | None = None,
                  max_context_length: int | None = None) -> dict[str, Any]:
        """The LoadPlan fields every engine fills the same way."""
        return {"backend": self.backend, "model_id": self.id, "device": on or device.kind,
                "runtime_mb": device.runtime_mb, "context_length": context_length,
                "max_context_length": max_context_length or context_length}


def pick_device(wanted: Literal["auto", "cpu", "cuda"], device: Device) -> Literal["cpu", "cuda"]:
    """An engine option `device: auto | cpu | cuda` against the machine's device."""
    return device.kind if wanted == "auto" else wanted


def shrink_context(plan: LoadPlan, min_context: int, room_mb: float) -> LoadPlan | None:
    """The largest context in [min_context, plan's) whose estimate fits `room_mb` (min_context if
    none does, so later rungs start from the smallest); None for a plan without a context."""
    current = plan.context_length
    if current is None or current <= min_context:
        return None

    def need(context: int) -> float:
        return dataclasses.replace(plan, context_length=context).estimate().total_mb

    step = 256 if min_context >= 256 else 16  # round contexts to what users write
    low, high = min_context, current - 1  # low always "acceptable", the answer lies in [low, high]
    if need(low) > room_mb:
        return dataclasses.replace(plan, context_length=min_context)
    while low < high:
        middle = (low + high + 1) // 2
        if need(middle) <= room_mb:
            low = middle
        else:
            high = middle - 1
    rounded = max(min_context, low // step * step)
    return dataclasses.replace(plan, context_length=rounded)
