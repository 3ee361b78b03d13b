"""A diffusers pipeline's models.yaml entry and how it resolves to a load plan (no torch import)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.capability import Capability
from backends.diffusion.plan import DiffusionPlan
from backends.plan import Device, LoadPlan
from backends.spec import BaseSpec, Rung, pick_device

_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")

Scheduler = Literal["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
                    "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler",
                    "KDPM2DiscreteScheduler", "DEISMultistepScheduler", "LCMScheduler"]


def parse_size(value: str) -> tuple[int, int]:
    """'512x768' -> (512, 768); ValueError otherwise."""
    match = _SIZE.match(str(value).strip())
    if not match:
        raise ValueError(f"size {value!r} is not WIDTHxHEIGHT, e.g. 512x512")
    return int(match.group(1)), int(match.group(2))


class DiffusionOptions(BaseModel):
    """A diffusers text-to-image pipeline (SD 1.x/2.x, SDXL, turbo-style), safetensors only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Literal["auto", "sd", "sdxl"] = Field(
        "auto", description="auto reads model_index.json; a single .safetensors file needs sd or sdxl.")
    config: Path | None = Field(None, description="For a single-file checkpoint: a local diffusers directory "
                                                  "of the same architecture, for the component configs.")
    scheduler: Scheduler | None = Field(None, description="Replace the pipeline's scheduler (same config).")
    default_steps: int = Field(30, ge=1, le=500)
    max_steps: int = Field(100, ge=1, le=500)
    default_size: str = "512x512"
    sizes: tuple[str, ...] = Field((), description="Allowed sizes; empty: any multiple of 8 within the bounds.")
    min_side: int = Field(64, ge=8, le=8192)
    max_side: int = Field(1024, ge=8, le=8192)
    max_pixels: int = Field(1024 * 1024, ge=64, description="Cap on width*height.")
    default_guidance: float = Field(7.5, ge=0, le=50, allow_inf_nan=False)
    max_guidance: float = Field(30.0, ge=0, le=50, allow_inf_nan=False)
    max_n: int = Field(4, ge=1, le=16)
    safety_checker: bool = Field(False, description="Run the pipeline's safety checker (off for local use).")
    device: Literal["auto", "cuda", "cpu"] = "auto"

    @field_validator("default_size")
    @classmethod
    def _default_size(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for size in value:
            parse_size(size)
        return value

    def size_error(self, width: int, height: int) -> str | None:
        """Why this model cannot make a width x height image, or None if it can."""
        if self.sizes:
            if f"{width}x{height}" not in self.sizes:
                return f"size {width}x{height} is not one of this model's sizes: {', '.join(self.sizes)}"
            return None
        if width % 8 or height % 8:
            return f"size {width}x{height}: width and height must be multiples of 8"
        if not (self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side):
            return f"size {width}x{height}: each side must be between {self.min_side} and {self.max_side}"
        if width * height > self.max_pixels:
            return f"size {width}x{height} exceeds {self.max_pixels} pixels"
        return None

    def largest_pixels(self) -> int:
        if self.sizes:
            return max(w * h for w, h in map(parse_size, self.sizes))
        return min(self.max_pixels, self.max_side * self.max_side)


class DiffusionSpec(BaseSpec):
    backend: Literal["diffusers"]
    path: Path = Field(description="A diffusers directory (model_index.json) or one .safetensors checkpoint.")
    options: DiffusionOptions = DiffusionOptions()

    supported_fit: ClassVar[frozenset[str]] = frozenset({"offload", "cpu"})

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.IMAGE})

    def files(self) -> tuple[Path, ...]:
        return (self.path, self.options.config) if self.options.config else (self.path,)

    def resolve(self, device: Device) -> DiffusionPlan:
        on = pick_device(self.options.device, device)
        o = self.options
        return DiffusionPlan(
            **self.base_plan(device, context_length=None, on=on), path=self.path, pipeline=o.pipeline,
            config=o.config, scheduler=o.scheduler, dtype="float16" if on == "cuda" else "float32",
            safety_checker=o.safety_checker, default_steps=o.default_steps, max_steps=o.max_steps,
            default_guidance=o.default_guidance, weight_files=tuple(self._weight_files()),
            largest_pixels=o.largest_pixels(), unet_width=self._unet_width())

    def fitted(self, plan: LoadPlan, rung: Rung, room_mb: float, device: Device) -> LoadPlan | None:
        if rung == "offload":
            on_gpu = isinstance(plan, DiffusionPlan) and plan.device == "cuda" and not plan.cpu_offload
            return dataclasses.replace(plan, cpu_offload=True) if on_gpu else None
        return super().fitted(plan, rung, room_mb, device)

    def rung_detail(self, rung: str, plan: LoadPlan) -> str:
        return "model_cpu_offload" if rung == "offload" else super().rung_detail(rung, plan)

    def _weight_files(self) -> list[Path]:
        """The component weights the pipeline loads (the safety checker only when it runs)."""
        if self.path.is_file():
            return [self.path]
        skip = set() if self.options.safety_checker else {"safety_checker"}
        return sorted(p for p in self.path.glob("*/*.safetensors") if p.parent.name not in skip)

    def _unet_width(self) -> int:
        pipeline_dir = self.path if self.path.is_dir() else self.options.config
        config = pipeline_dir / "unet" / "config.json" if pipeline_dir else None
        if config is not None and config.is_file():
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                return int(json.loads(config.read_text())["block_out_channels"][0])
        return 320
