"""A SeamlessM4T v2 model's models.yaml entry and how it resolves to a load plan (no torch import)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backends import checkpoint
from backends.capability import Capability
from backends.plan import Device
from backends.seamless.plan import SeamlessPlan
from backends.spec import BaseSpec, pick_device
from backends.speech import default_voices


class SeamlessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_language: str = Field("eng", min_length=3, max_length=3,
                                  description="ISO-639-3 language of speech when a request names none.")
    voices: dict[str, int] | None = Field(
        None, description="Voice name -> vocoder speaker id; default: OpenAI's voice names over the speakers.")
    max_new_tokens: int = Field(256, ge=1, le=4096, description="Longest text (in tokens) per audio window.")
    window_seconds: float = Field(20.0, ge=1, le=60, allow_inf_nan=False,
                                  description="Speech is read in windows of this length.")
    max_audio_seconds: float = Field(1800.0, gt=0, le=4 * 3600, allow_inf_nan=False,
                                     description="Longest decoded audio accepted (400 beyond).")
    max_input_chars: int = Field(4096, ge=1, le=100_000, description="Longest text to speak (400 beyond).")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SeamlessSpec(BaseSpec):
    backend: Literal["seamless-m4t"]
    path: Path = Field(description="A transformers SeamlessM4Tv2Model directory with its processor files.")
    options: SeamlessOptions = SeamlessOptions()

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.TRANSCRIPTION, Capability.SPEECH})

    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def voices(self) -> dict[str, int]:
        speakers = int(checkpoint.config(self.path).get("vocoder_num_spkrs") or 1)
        return dict(self.options.voices) if self.options.voices else default_voices(speakers)

    def resolve(self, device: Device) -> SeamlessPlan:
        on = pick_device(self.options.device, device)
        config = checkpoint.config(self.path)
        o = self.options
        return SeamlessPlan(
            **self.base_plan(device, context_length=None, on=on), path=self.path,
            dtype="float16" if on == "cuda" else "float32", default_language=o.default_language,
            max_new_tokens=o.max_new_tokens, window_seconds=o.window_seconds,
            weight_files=tuple(checkpoint.weight_files(self.path)), hidden=int(config.get("hidden_size") or 1024),
            layers=int(config.get("speech_encoder_layers") or 24))
