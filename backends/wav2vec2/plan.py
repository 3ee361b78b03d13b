"""A Wav2Vec2 CTC model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from backends import safetensors
from backends.plan import MIB, LoadPlan, MemoryEstimate
from backends.speech import SAMPLE_RATE


@dataclass(frozen=True, kw_only=True)
class Wav2Vec2Plan(LoadPlan):
    adapter: ClassVar[str] = "backends.wav2vec2.adapter:Wav2Vec2Adapter"

    path: Path
    dtype: Literal["float16", "float32"]
    language: str  # the one language a CTC model was trained for
    window_seconds: float  # audio is read in windows this long (attention grows with its square)
    weight_files: tuple[Path, ...]
    hidden: int
    layers: int
    conv_channels: int
    samples_per_frame: int

    def estimate(self) -> MemoryEstimate:
        element = 2 if self.dtype == "float16" else 4
        samples = int(self.window_seconds * SAMPLE_RATE)
        frames = samples // max(self.samples_per_frame, 1)
        # The first conv layer's output for a window, and each layer's hidden states and attention scores.
        activations = (samples * self.conv_channels + self.layers * frames * (6 * self.hidden + frames)) * element
        return MemoryEstimate(weights_mb=safetensors.bytes_at(self.weight_files, element) / MIB,
                              activations_mb=activations / MIB, runtime_mb=self.runtime_mb)
