"""A faster-whisper model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from backends.plan import MIB, LoadPlan, MemoryEstimate

# model.bin is saved as float16 by the usual conversion; the compute type's width scales it.
_WIDTH_VS_STORED = {"float32": 2.0, "int8": 0.5, "int8_float32": 0.5, "int8_float16": 0.5, "int8_bfloat16": 0.5}
BUFFERS_MB = 32


@dataclass(frozen=True, kw_only=True)
class WhisperPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.whisper.adapter:WhisperAdapter"
    # Parked as a copy of the CTranslate2 directory on tmpfs. CTranslate2 cannot save a model in
    # its loaded compute type, so a resume converts again (cheap next to reading model.bin).
    park_form: ClassVar[str] = "bundle"

    path: Path
    compute_type: str  # a CTranslate2 compute type, checked by the spec
    beam_size: int
    cpu_threads: int
    max_new_tokens: int | None
    model_bytes: int  # model.bin as stored

    def estimate(self) -> MemoryEstimate:
        weights = self.model_bytes / MIB * _WIDTH_VS_STORED.get(self.compute_type, 1.0)
        # Encoder activations for a 30 s window and the decoder's beams grow with the model's width.
        return MemoryEstimate(weights_mb=weights, activations_mb=weights * 0.05 * self.beam_size,
                              buffers_mb=BUFFERS_MB, runtime_mb=self.runtime_mb)

    def parallel(self) -> int | None:
        return 1  # one decoding loop at a time

    def warm_mb(self) -> float:
        return self.model_bytes / MIB

    def from_warm(self, location: Path) -> WhisperPlan:
        return dataclasses.replace(self, path=location, source="ram")
