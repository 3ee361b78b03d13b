"""The fake engine's load plan (no pydantic: the worker imports it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from backends.plan import LoadPlan, MemoryEstimate


@dataclass(frozen=True, kw_only=True)
class FakePlan(LoadPlan):
    adapter: ClassVar[str] = "backends.fake.adapter:FakeAdapter"
    # Parks like a torch engine: a manifest in the warm tier stands in for its weights, which are
    # counted at memory_mb, and a resume reads only the manifest.
    park_form: ClassVar[str] = "bundle"

    context_length: int
    memory_mb: int
    load_seconds: float
    token_latency_s: float
    fail_load: str | None
    fail_load_while_exists: str | None
    crash_after_tokens: int | None
    hang_load: bool
    hang_generation: bool
    hang_after_tokens: int | None
    allocate: bool
    resume_seconds: float = 0.0
    park_seconds: float = 0.0
    fail_park: str | None = None
    kv_mb_per_1k: float = 0.0
    warm_path: str | None = None  # the parked manifest a resume reads
    slots: int | None = None

    def parallel(self) -> int | None:
        return self.slots

    def estimate(self) -> MemoryEstimate:
        return MemoryEstimate(weights_mb=self.memory_mb, kv_cache_mb=self.kv_mb_per_1k * self.context_length / 1000,
                              runtime_mb=self.runtime_mb)

    def from_warm(self, location: Path) -> FakePlan:
        return dataclasses.replace(self, warm_path=str(location), source="ram")
