"""A Wav2Vec2 CTC model's models.yaml entry and how it resolves to a load plan (no torch import)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backends import checkpoint
from backends.capability import Capability
from backends.plan import Device
from backends.spec import BaseSpec, pick_device
from backends.wav2vec2.plan import Wav2Vec2Plan


class Wav2Vec2Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str = Field("en", min_length=2, max_length=8, description="The language the model was trained on.")
    window_seconds: float = Field(30.0, ge=1, le=120, allow_inf_nan=False,
                                  description="Audio is transcribed in windows of this length.")
    max_audio_seconds: float = Field(1800.0, gt=0, le=4 * 3600, allow_inf_nan=False,
                                     description="Longest decoded audio accepted (400 beyond).")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Wav2Vec2Spec(BaseSpec):
    backend: Literal["wav2vec2"]
    path: Path = Field(description="A transformers Wav2Vec2ForCTC directory with its processor files.")
    options: Wav2Vec2Options = Wav2Vec2Options()

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.TRANSCRIPTION})

    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def resolve(self, device: Device) -> Wav2Vec2Plan:
        on = pick_device(self.options.device, device)
        config = checkpoint.config(self.path)
        return Wav2Vec2Plan(
            **self.base_plan(device, context_length=None, on=on), path=self.path,
            dtype="float16" if on == "cuda" else "float32", language=self.options.language,
            window_seconds=self.options.window_seconds, weight_files=tuple(checkpoint.weight_files(self.path)),
            hidden=int(config.get("hidden_size") or 768), layers=int(config.get("num_hidden_layers") or 12),
            conv_channels=int((config.get("conv_dim") or [512])[0]),
            samples_per_frame=math.prod(config.get("conv_stride") or [320]))
