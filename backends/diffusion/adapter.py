"""diffusers text-to-image pipelines (SD 1.x/2.x, SDXL, turbo-style) inside a worker process.

Loads a local diffusers directory (model_index.json) or one .safetensors checkpoint, safetensors
only, never remote code or custom pipelines, in the plan's dtype (fp16 on a GPU, fp32 on CPU).
Cancellation is checked after every denoising step (callback_on_step_end), so a client that leaves
stops the steps.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any

from backends import bundle
from backends.contract import Cancel, Chunks, ImageParams, ImageResult, InvalidInput
from backends.diffusion.plan import DiffusionPlan
from backends.plan import MIB


class DiffusionAdapter:
    def __init__(self, plan: DiffusionPlan):
        import torch

        self.plan = plan
        self._torch = torch
        if plan.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device: cuda was planned but torch sees no CUDA device")
        self.dtype = getattr(torch, plan.dtype)
        self.pipe = self._load(plan.path)
        self.pipe.set_progress_bar_config(disable=True)
        self._lock = threading.Lock()  # one pipeline, one denoising loop at a time
        self._images = 0
        self._steps = 0
        self._cancelled = 0
        self._weights_mb = sum(
            sum(p.numel() * p.element_size() for p in module.parameters()) / MIB
            for module in self.pipe.components.values() if isinstance(module, torch.nn.Module))

    def _load(self, path: Path):
        import diffusers

        diffusers.utils.logging.disable_progress_bar()  # worker logs are for people, not progress bars

        plan = self.plan
        kwargs: dict[str, Any] = {"dtype": self.dtype, "use_safetensors": True}
        if path.is_file():
            if path.suffix != ".safetensors":
                raise RuntimeError(f"{path.name}: only .safetensors checkpoints are loaded")
            cls = diffusers.StableDiffusionXLPipeline if plan.pipeline == "sdxl" else diffusers.StableDiffusionPipeline
            if plan.config:
                kwargs["config"] = str(plan.config)
            if cls is diffusers.StableDiffusionPipeline and not plan.safety_checker:
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_single_file(str(path), local_files_only=True, **kwargs)
        else:
            cls = {"sd": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline}.get(
                plan.pipeline, diffusers.AutoPipelineForText2Image)
            has_checker = (path / "safety_checker").is_dir()
            if not plan.safety_checker and (has_checker or cls is diffusers.StableDiffusionPipeline):
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_pretrained(str(path), local_files_only=True, **kwargs)
        if plan.safety_checker and getattr(pipe, "safety_checker", None) is None:
            raise RuntimeError("safety_checker: true, but this pipeline has no safety checker to run")
        if plan.scheduler:
            pipe.scheduler = getattr(diffusers, plan.scheduler).from_config(pipe.scheduler.config)
        if plan.cpu_offload:  # the fit ladder's offload rung: one component on the device at a time
            pipe.enable_model_cpu_offload(device=plan.device)
            return pipe
        return pipe.to(plan.device)

    def memory_mb(self) -> float:
        # The weights as loaded (under CPU offload: the largest component), plus the largest image's
        # activations (as estimated).
        estimate = self.plan.estimate()
        return (estimate.weights_mb if self.plan.cpu_offload else self._weights_mb) + estimate.activations_mb

    def stats(self) -> dict[str, Any]:
        return {"images_generated": self._images, "steps_run": self._steps, "cancelled": self._cancelled}

    def park(self, dest: Path) -> int:
        """Write the pipeline as loaded (its dtype and scheduler; a single-file checkpoint already
        converted) as a diffusers directory a fresh worker loads without the original files."""
        with self._lock:
            self.pipe.save_pretrained(dest, safe_serialization=True)
        return bundle.size_of(dest)

    def close(self) -> None:
        self.pipe = None
        if self.plan.device == "cuda":
            self._torch.cuda.empty_cache()

    def generate_image(self, params: ImageParams, cancel: Cancel) -> Chunks:
        steps = params.steps or self.plan.default_steps
        if steps > self.plan.max_steps:
            raise InvalidInput(f"steps must be at most {self.plan.max_steps}", param="steps")
        if params.width % 8 or params.height % 8:
            raise InvalidInput("width and height must be multiples of 8", param="size")
        guidance = self.plan.default_guidance if params.guidance_scale is None else params.guidance_scale
        images: list[str] = []
        nsfw: list[bool] = []
        with self._lock:
            for index in range(params.n):
                if cancel:
                    break
                png, flagged = self._one(params, steps, guidance, index, cancel)
                if png is None:
                    break
                images.append(png)
                nsfw.append(flagged)
                yield {"image": index, "steps": steps}
        finish = "cancelled" if cancel else "stop"
        if cancel:
            self._cancelled += 1
        result: ImageResult = {"images": images, "steps": steps, "seed": params.seed, "finish_reason": finish,
                               "nsfw": nsfw if self.plan.safety_checker else None}
        return result

    def _one(self, params: ImageParams, steps: int, guidance: float, index: int,
             cancel: Cancel) -> tuple[str | None, bool]:
        torch = self._torch
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.plan.device).manual_seed((params.seed + index) % 2**64)

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            self._steps += 1
            if cancel:
                pipe._interrupt = True  # the pipeline skips the remaining steps
            return tensors

        with torch.inference_mode():
            result = self.pipe(
                prompt=params.prompt, negative_prompt=params.negative_prompt or None,
                width=params.width, height=params.height, num_inference_steps=steps,
                guidance_scale=guidance, generator=generator, num_images_per_prompt=1,
                callback_on_step_end=on_step_end, output_type="pil")
        if cancel:
            return None, False
        self._images += 1
        flags = getattr(result, "nsfw_content_detected", None) or [False]
        buffer = io.BytesIO()
        result.images[0].save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii"), bool(flags[0])
