"""A VITS / MMS-TTS model's models.yaml entry and how it resolves to a load plan (no torch import)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backends import checkpoint
from backends.capability import Capability
from backends.plan import Device
from backends.spec import BaseSpec, pick_device
from backends.speech import default_voices
from backends.vits.plan import VitsPlan


class VitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    voices: dict[str, int] | None = Field(
        None, description="Voice name -> speaker id; default: OpenAI's voice names spread over the speakers.")
    max_input_chars: int = Field(4096, ge=1, le=100_000, description="Longest text accepted (400 beyond).")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class VitsSpec(BaseSpec):
    backend: Literal["vits"]
    path: Path = Field(description="A transformers VitsModel directory (e.g. facebook/mms-tts-eng).")
    options: VitsOptions = VitsOptions()

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.SPEECH})

    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def voices(self) -> dict[str, int]:
        speakers = int(checkpoint.config(self.path).get("num_speakers") or 1)
        return dict(self.options.voices) if self.options.voices else default_voices(speakers)

    def resolve(self, device: Device) -> VitsPlan:
        on = pick_device(self.options.device, device)
        return VitsPlan(**self.base_plan(device, context_length=None, on=on), path=self.path,
                        dtype="float16" if on == "cuda" else "float32",
                        weight_files=tuple(checkpoint.weight_files(self.path)))
