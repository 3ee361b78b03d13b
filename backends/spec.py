"""What every engine's models.yaml entry shares, and keep-alive durations.

An engine package's `spec.py` subclasses BaseSpec with its `backend`, its `options` model (the one
place its defaults live) and `resolve(device)`, which makes the engine's LoadPlan (plan.py). It
imports no engine (torch, llama_cpp, ctranslate2), so the HTTP process plans memory with it
without loading anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.capability import Capability
from backends.plan import Device, LoadPlan

FOREVER = math.inf  # a keep-alive that never expires (-1 in models.yaml and requests)
MAX_KEEP_ALIVE_S = 10**9  # ~31 years; longer is what -1 (forever) is for

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
    description: str = ""

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> float:
        return parse_keep_alive(value)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    @property
    def capabilities(self) -> frozenset[Capability]:
        raise NotImplementedError

    def files(self) -> Iterable[Path]:
        """Model files this spec reads; they must lie inside the allowed directories."""
        return ()

    def resolve(self, device: Device) -> LoadPlan:
        """Every load-time decision for this model on `device`. Reads file headers, never weights,
        and never raises for an unreadable file: the load reports that."""
        raise NotImplementedError

    def base_plan(self, device: Device, *, context_length: int | None, on: Literal["cpu", "cuda"] | None = None
                  ) -> dict[str, Any]:
        """The LoadPlan fields every engine fills the same way."""
        return {"backend": self.backend, "model_id": self.id, "device": on or device.kind,
                "runtime_mb": device.runtime_mb, "context_length": context_length}


def pick_device(wanted: Literal["auto", "cpu", "cuda"], device: Device) -> Literal["cpu", "cuda"]:
    """An engine option `device: auto | cpu | cuda` against the machine's device."""
    return device.kind if wanted == "auto" else wanted
