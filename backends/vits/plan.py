"""A VITS model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from backends import safetensors
from backends.plan import MIB, LoadPlan, MemoryEstimate

BUFFERS_MB = 32  # one sentence's spectrogram and waveform


@dataclass(frozen=True, kw_only=True)
class VitsPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.vits.adapter:VitsAdapter"

    path: Path
    dtype: Literal["float16", "float32"]
    weight_files: tuple[Path, ...]

    def estimate(self) -> MemoryEstimate:
        element = 2 if self.dtype == "float16" else 4
        return MemoryEstimate(weights_mb=safetensors.bytes_at(self.weight_files, element) / MIB,
                              buffers_mb=BUFFERS_MB, runtime_mb=self.runtime_mb)
