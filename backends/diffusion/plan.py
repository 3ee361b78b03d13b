"""A diffusers pipeline's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from backends import safetensors
from backends.plan import MIB, LoadPlan, MemoryEstimate


@dataclass(frozen=True, kw_only=True)
class DiffusionPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.diffusion.adapter:DiffusionAdapter"
    # Parked as a diffusers directory of the loaded pipeline (its dtype, its scheduler) on tmpfs.
    park_form: ClassVar[str] = "bundle"

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
    # The fit ladder's offload rung: diffusers' model CPU offload keeps each component in RAM and
    # moves it to the GPU only while it runs, so the device holds the largest one at a time.
    cpu_offload: bool = False

    def estimate(self) -> MemoryEstimate:
        activations = self.activations_mb(self.largest_pixels)
        if not self.cpu_offload:
            weights = safetensors.bytes_at(self.weight_files, self.element_bytes) / MIB
            return MemoryEstimate(weights_mb=weights, activations_mb=activations, runtime_mb=self.runtime_mb)
        parts = self.component_mb()
        largest = max(parts.values(), default=0.0)
        return MemoryEstimate(weights_mb=largest, activations_mb=activations, runtime_mb=self.runtime_mb,
                              host_mb=sum(parts.values()) - largest)

    def component_mb(self) -> dict[str, float]:
        """Weights per pipeline component (its directory), as loaded."""
        parts: dict[str, float] = {}
        for file in self.weight_files:
            parts[file.parent.name] = parts.get(file.parent.name, 0.0) + safetensors.bytes_at([file], self.element_bytes) / MIB
        return parts

    def parallel(self) -> int | None:
        return 1  # one denoising loop at a time

    def from_warm(self, location: Path) -> DiffusionPlan:
        return dataclasses.replace(self, path=location, config=None, source="ram",
                                   weight_files=tuple(sorted(location.glob("*/*.safetensors"))))

    @property
    def element_bytes(self) -> int:
        return 2 if self.dtype == "float16" else 4

    def activations_mb(self, pixels: int) -> float:
        """Peak UNet/VAE activations for one image: ~1.5 GiB at 512x512 fp16 for SD-1.5's 320-wide UNet,
        scaled by pixels, dtype width and this UNet's width."""
        return 1536 * (pixels / (512 * 512)) * (self.unet_width / 320) * (self.element_bytes / 2)
