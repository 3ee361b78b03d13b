"""diffusers text-to-image pipelines (SD 1.x/2.x, SDXL, turbo-style) inside a worker process.

Loads a local diffusers directory (model_index.json) or one .safetensors checkpoint, safetensors
only, never remote code or custom pipelines. fp16 on a GPU, fp32 on CPU. Cancellation is checked
after every denoising step (callback_on_step_end), so a client that leaves stops the steps.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any

from backends.base import Cancel, Chunks, ImageParams, InvalidInput

MIB = 1024 * 1024


class DiffusionAdapter:
    def __init__(self, spec: dict[str, Any]):
        import torch

        self.model_id = spec["id"]
        self.options = spec.get("options", {})
        self._torch = torch
        wanted = self.options.get("device", "auto")
        self.device = "cuda" if wanted != "cpu" and torch.cuda.is_available() else "cpu"
        if wanted == "cuda" and self.device != "cuda":
            raise RuntimeError("device: cuda was configured but no CUDA device is visible")
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.pipe = self._load(Path(spec["path"]))
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

        kind = self.options.get("pipeline", "auto")
        kwargs: dict[str, Any] = {"dtype": self.dtype, "use_safetensors": True}
        if path.is_file():
            if path.suffix != ".safetensors":
                raise RuntimeError(f"{path.name}: only .safetensors checkpoints are loaded")
            cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
            if self.options.get("config"):
                kwargs["config"] = str(self.options["config"])
            if cls is diffusers.StableDiffusionPipeline and not self.options.get("safety_checker"):
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_single_file(str(path), local_files_only=True, **kwargs)
        else:
            cls = {"sd": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline}.get(
                kind, diffusers.AutoPipelineForText2Image)
            has_checker = (path / "safety_checker").is_dir()
            if not self.options.get("safety_checker") and (has_checker or cls is diffusers.StableDiffusionPipeline):
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_pretrained(str(path), local_files_only=True, **kwargs)
        if self.options.get("safety_checker") and getattr(pipe, "safety_checker", None) is None:
            raise RuntimeError("safety_checker: true, but this pipeline has no safety checker to run")
        scheduler = self.options.get("scheduler")
        if scheduler:
            pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
        return pipe.to(self.device)

    def memory_mb(self) -> float:
        # Weights plus one default-size image's activations (see DiffusionSpec.activations_mb).
        width, _, height = str(self.options.get("default_size", "512x512")).partition("x")
        unet = getattr(self.pipe, "unet", None)
        channels = unet.config.block_out_channels[0] if unet is not None else 320
        pixels = int(width) * int(height)
        activations = 1536 * (pixels / (512 * 512)) * (channels / 320) * (2 if self.device == "cuda" else 4) / 2
        return self._weights_mb + activations

    def stats(self) -> dict[str, Any]:
        return {"images_generated": self._images, "steps_run": self._steps, "cancelled": self._cancelled}

    def close(self) -> None:
        self.pipe = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()

    def generate_image(self, params: ImageParams, cancel: Cancel) -> Chunks:
        steps = params.steps or int(self.options.get("default_steps", 30))
        if steps > int(self.options.get("max_steps", 100)):
            raise InvalidInput(f"steps must be at most {self.options.get('max_steps', 100)}", param="steps")
        if params.width % 8 or params.height % 8:
            raise InvalidInput("width and height must be multiples of 8", param="size")
        guidance = params.guidance_scale
        if guidance is None:
            guidance = float(self.options.get("default_guidance", 7.5))
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
        return {"images": images, "steps": steps, "seed": params.seed, "finish_reason": finish,
                "nsfw": nsfw if self.options.get("safety_checker") else None}

    def _one(self, params: ImageParams, steps: int, guidance: float, index: int,
             cancel: Cancel) -> tuple[str | None, bool]:
        torch = self._torch
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed((params.seed + index) % 2**64)

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
