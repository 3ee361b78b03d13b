"""The fake engine's load plan (no pydantic: the worker imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from backends.plan import LoadPlan, MemoryEstimate


@dataclass(frozen=True, kw_only=True)
class FakePlan(LoadPlan):
    adapter: ClassVar[str] = "backends.fake.adapter:FakeAdapter"

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

    def estimate(self) -> MemoryEstimate:
        return MemoryEstimate(weights_mb=self.memory_mb, runtime_mb=self.runtime_mb)
