"""A GGUF model's models.yaml entry and how it resolves to a load plan (no llama_cpp import)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends import tools
from backends.capability import Capability
from backends.gguf import lora
from backends.gguf.file import GgufFile, GgufFileError
from backends.gguf.plan import GgufPlan
from backends.gguf.vision import ProjectorFile
from backends.plan import Device, LoadPlan
from backends.spec import BaseSpec, Rung
from backends.tools import ToolFormatOption

DEFAULT_CONTEXT = 4096  # long-context files would otherwise reserve GiBs of cache no local request uses


class GgufOptions(BaseModel):
    """llama-cpp-python settings for one GGUF file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_ctx: int | None = Field(None, ge=16, le=1_048_576, description="Context window; default min(trained, 4096).")
    n_gpu_layers: int | None = Field(None, ge=-1, description="Layers on the GPU; default all when one is visible.")
    n_threads: int | None = Field(None, ge=1, le=512, description="Also used for prompts and batched steps.")
    n_parallel: int = Field(4, ge=1, le=64, description="Requests decoded together in one batch (shared KV pool).")
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto", description="Flash attention; auto: where llama.cpp supports it for the model and device (its "
                            "own default; ~10% faster decode on a CPU, less compute memory).")
    chat_template: str | None = Field(None, max_length=200_000, description="Overrides the GGUF's template.")
    tool_format: ToolFormatOption = Field("auto", description="Tool-call syntax; auto: the one the template teaches.")
    embedding: bool = Field(False, description="Serve /v1/embeddings (pooled) instead of text generation.")
    rerank: bool = Field(False, description="Serve /v1/rerank with the file's classification head (rank pooling).")
    mmproj: Path | None = Field(None, description="A vision projector (LLaVA-style mmproj GGUF): chats take images.")
    max_images: int = Field(8, ge=1, le=64, description="Images one request may carry (with mmproj).")

    @model_validator(mode="after")
    def _one_pooling(self) -> GgufOptions:
        if self.embedding and self.rerank:
            raise ValueError("a GGUF model is an embedding model or a reranker, not both")
        if self.mmproj is not None and (self.embedding or self.rerank):
            raise ValueError("mmproj (images in chats) needs a chat model, not an embedding model or a reranker")
        return self


class GgufSpec(BaseSpec):
    backend: Literal["gguf"]
    path: Path
    options: GgufOptions = GgufOptions()

    supported_fit: ClassVar[frozenset[str]] = frozenset({"context", "offload", "cpu"})
    # What users do by hand for a 13B+ GGUF on a 12 GB card, on by default (llama.cpp's --fit too).
    default_fit: ClassVar[tuple[Rung, ...]] = ("context", "offload", "cpu")
    takes_adapters: ClassVar[bool] = True

    @model_validator(mode="after")
    def _adapters_need_generation(self) -> GgufSpec:
        if self.adapters and (self.options.embedding or self.options.rerank):
            raise ValueError("LoRA adapters are served for chat and completions, not for an embedding model or reranker")
        return self

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.options.embedding:
            return frozenset({Capability.EMBEDDING})
        if self.options.rerank:
            return frozenset({Capability.RERANK})
        vision = {Capability.VISION} if self.options.mmproj else set()
        return frozenset({Capability.CHAT, Capability.COMPLETION, *vision})

    def files(self) -> tuple[Path, ...]:
        return (self.path, *((self.options.mmproj,) if self.options.mmproj else ()), *super().files())

    def resolve(self, device: Device) -> GgufPlan:
        try:
            info: GgufFile | None = GgufFile.read(self.path)
        except GgufFileError:
            info = None  # the load reports the problem; the estimate falls back to the file size
        trained = info.context_length if info else DEFAULT_CONTEXT
        n_ctx = self.options.n_ctx or self.context_length or min(trained, DEFAULT_CONTEXT)
        layers = self.options.n_gpu_layers
        if layers is None:
            layers = -1 if device.kind == "cuda" else 0
        cores = os.cpu_count() or 1
        size = info.size_bytes if info else (self.path.stat().st_size if self.path.exists() else 0)
        projector = ProjectorFile.read(self.options.mmproj) if self.options.mmproj else None
        vision = {} if self.options.mmproj is None else {
            "mmproj": self.options.mmproj, "max_images": self.options.max_images,
            "image_size": projector.image_size if projector else None,
            "mmproj_bytes": projector.size_bytes if projector else lora.file_bytes(self.options.mmproj),
            "encoder_bytes": projector.encoder_bytes() if projector else 0}
        return GgufPlan(
            **self.base_plan(device, context_length=n_ctx, on="cuda" if device.kind == "cuda" and layers else "cpu",
                             max_context_length=max(trained, n_ctx)),
            tool_format=None if self.options.embedding or self.options.rerank else tools.chosen(
                self.options.tool_format, self.options.chat_template or (info.chat_template if info else None)),
            fim=bool(info and not self.options.embedding and not self.options.rerank and info.fim_tokens()),
            path=self.path, n_gpu_layers=layers,
            # Unset, llama-cpp-python's defaults: half the cores per token, every core per batch. Set,
            # batches follow it (all cores stalled batched steps 100x on a busy machine).
            n_threads=self.options.n_threads or max(cores // 2, 1), n_threads_batch=self.options.n_threads or cores,
            n_parallel=self.options.n_parallel, flash_attn=self.options.flash_attn,
            chat_template=self.options.chat_template,
            embedding=self.options.embedding, rerank=self.options.rerank, file_bytes=size,
            kv_bytes_per_token=info.kv_cache_bytes(1) if info else 0,
            layer_bytes=info.tensors.layers if info else (), output_bytes=info.tensors.output if info else 0,
            input_bytes=info.tensors.input if info else 0, adapters=self.lora_plans(lora.file_bytes), **vision)

    def fitted(self, plan: LoadPlan, rung: Rung, room_mb: float, device: Device) -> LoadPlan | None:
        if rung != "offload":
            return super().fitted(plan, rung, room_mb, device)
        if not isinstance(plan, GgufPlan) or plan.device != "cuda":
            return None
        layers = plan.offload_split(room_mb)
        return None if layers is None else dataclasses.replace(plan, n_gpu_layers=layers)

    def rung_detail(self, rung: str, plan: LoadPlan) -> str:
        if rung == "offload" and isinstance(plan, GgufPlan):
            return f"n_gpu_layers={plan.n_gpu_layers}/{len(plan.layer_bytes) + 1}"
        return super().rung_detail(rung, plan)
