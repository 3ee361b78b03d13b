"""The fake engine's models.yaml entry (tests and the demo; see adapter.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backends.capability import Capability
from backends.fake.plan import FakePlan
from backends.plan import Device
from backends.spec import BaseSpec


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(256, ge=1, description="The footprint the fake reports (and estimates).")
    load_seconds: float = Field(0.0, ge=0, le=3600)
    token_latency_s: float = Field(0.0, ge=0, le=60)
    fail_load: str | None = None
    fail_load_while_exists: str | None = Field(None, description="Fail to load while this file exists.")
    crash_after_tokens: int | None = Field(None, ge=0)
    hang_load: bool = False
    hang_generation: bool = False
    hang_after_tokens: int | None = Field(None, ge=0, description="Wedge (heartbeat alive) after this many tokens.")
    context_length: int = Field(4096, ge=16)
    allocate: bool = Field(False, description="Really allocate memory_mb (measured memory is real).")
    resume_seconds: float = Field(0.0, ge=0, le=3600, description="Load time from the warm tier.")
    park_seconds: float = Field(0.0, ge=0, le=3600, description="Time to park (write the warm copy).")
    fail_park: str | None = Field(None, description="Parking fails with this message.")
    kv_mb_per_1k: float = Field(0.0, ge=0, description="Simulated KV cache per 1000 tokens of context.")
    slots: int | None = Field(None, ge=1, description="Requests served at once (none: no limit).")


class FakeSpec(BaseSpec):
    backend: Literal["fake"]
    options: FakeOptions = FakeOptions()

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.CHAT, Capability.COMPLETION})

    def resolve(self, device: Device) -> FakePlan:
        context = self.context_length or self.options.context_length
        # The fake honours a suffix (its answers are scripted), so it reports fill-in-the-middle.
        return FakePlan(**self.base_plan(device, context_length=context,
                                         max_context_length=max(context, self.options.context_length)),
                        fim=True,
                        **self.options.model_dump(exclude={"context_length"}))
