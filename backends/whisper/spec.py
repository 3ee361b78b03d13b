"""A faster-whisper model's models.yaml entry and how it resolves to a load plan (no ctranslate2 import)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from backends.capability import Capability
from backends.plan import Device, LoadPlan
from backends.spec import BaseSpec, Rung, pick_device
from backends.whisper.plan import WhisperPlan

ComputeType = Literal["default", "auto", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "int16",
                      "float16", "bfloat16", "float32"]


class WhisperOptions(BaseModel):
    """faster-whisper on CTranslate2 (a converted model directory: model.bin, tokenizer.json, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute_type: ComputeType = Field("default", description="CTranslate2 compute type (int8 is fastest on CPU).")
    beam_size: int = Field(5, ge=1, le=16)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    cpu_threads: int = Field(0, ge=0, le=256, description="0: CTranslate2's default.")
    max_audio_seconds: float = Field(1800.0, gt=0, le=4 * 3600, allow_inf_nan=False,
                                     description="Longest decoded audio accepted (400 beyond).")
    max_new_tokens: int | None = Field(None, ge=1, le=448, description="Cap on tokens per 30 s window.")


class WhisperSpec(BaseSpec):
    backend: Literal["faster-whisper"]
    path: Path = Field(description="A CTranslate2 Whisper directory (ct2-transformers-converter output).")
    options: WhisperOptions = WhisperOptions()

    supported_fit: ClassVar[frozenset[str]] = frozenset({"compute", "cpu"})

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.TRANSCRIPTION})

    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def resolve(self, device: Device) -> WhisperPlan:
        model = self.path / "model.bin"
        o = self.options
        return WhisperPlan(
            **self.base_plan(device, context_length=None, on=pick_device(o.device, device)), path=self.path,
            compute_type=o.compute_type, beam_size=o.beam_size, cpu_threads=o.cpu_threads,
            max_new_tokens=o.max_new_tokens, model_bytes=model.stat().st_size if model.is_file() else 0)

    def fitted(self, plan: LoadPlan, rung: Rung, room_mb: float, device: Device) -> LoadPlan | None:
        if rung != "compute":
            return super().fitted(plan, rung, room_mb, device)
        if not isinstance(plan, WhisperPlan):
            return None
        lighter = [dataclasses.replace(plan, compute_type=c) for c in LIGHTER[plan.device]]
        lighter = [p for p in lighter if p.estimate().total_mb < plan.estimate().total_mb]
        fitting = [p for p in lighter if p.estimate().total_mb <= room_mb]
        return (fitting or lighter[-1:] or [None])[0]

    def rung_detail(self, rung: str, plan: LoadPlan) -> str:
        if rung == "compute" and isinstance(plan, WhisperPlan):
            return f"compute_type={plan.compute_type}"
        return super().rung_detail(rung, plan)


# The compute types the compute rung tries, heaviest first: int8 weights with float16 (GPU) or
# float32 (CPU) activations keep accuracy close and halve the weights.
LIGHTER: dict[str, tuple[str, ...]] = {"cuda": ("int8_float16",), "cpu": ("int8",)}
