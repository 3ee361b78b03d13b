"""A diffusers pipeline's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from backends import safetensors
from backends.plan import MIB, LoadPlan, MemoryEstimate


@dataclass(frozen=True, kw_only=True)
class DiffusionPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.diffusion.adapter:DiffusionAdapter"

    path: Path
    pipeline: Literal["auto", "sd", "sdxl"]
    config: Path | None
    scheduler: str | None  # a diffusers scheduler class name, checked by the spec
    dtype: Literal["float16", "float32"]  # fp16 on a GPU, fp32 on a CPU
    safety_checker: bool
    default_steps: int
    max_steps: int
    default_guidance: float
    weight_files: tuple[Path, ...]  # the components the pipeline loads
    largest_pixels: int
    unet_width: int  # the UNet's first block width, which activations scale with

    def estimate(self) -> MemoryEstimate:
        weights = safetensors.bytes_at(self.weight_files, self.element_bytes) / MIB
        return MemoryEstimate(weights_mb=weights, activations_mb=self.activations_mb(self.largest_pixels),
                              runtime_mb=self.runtime_mb)

    @property
    def element_bytes(self) -> int:
        return 2 if self.dtype == "float16" else 4

    def activations_mb(self, pixels: int) -> float:
        """Peak UNet/VAE activations for one image: ~1.5 GiB at 512x512 fp16 for SD-1.5's 320-wide UNet,
        scaled by pixels, dtype width and this UNet's width."""
        return 1536 * (pixels / (512 * 512)) * (self.unet_width / 320) * (self.element_bytes / 2)
