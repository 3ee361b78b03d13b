"""A GGUF model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from backends.plan import MIB, POOLED_PARALLEL, LoadPlan, LoraAdapter, MemoryEstimate

BUFFERS_MB = 48  # llama.cpp's compute and output buffers for a small model, roughly


@dataclass(frozen=True, kw_only=True)
class GgufPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.gguf.adapter:GgufAdapter"
    # llama.cpp mmaps the weights, so the page cache is their warm tier: a parked GGUF stays
    # resident there and a new worker maps the same pages (no read, no conversion).
    park_form: ClassVar[str] = "files"

    path: Path
    context_length: int  # n_ctx: the one KV pool every parallel sequence shares
    n_gpu_layers: int  # -1: all; k: the output layer and the last k-1 blocks (llama.cpp's order)
    n_threads: int  # single-token decode steps
    n_threads_batch: int  # prompts and batched steps
    n_parallel: int
    chat_template: str | None  # models.yaml's override; None: the file's own
    embedding: bool
    rerank: bool  # scores (query, document) pairs with the file's classification head
    file_bytes: int
    kv_bytes_per_token: int  # 0 when the file could not be read
    layer_bytes: tuple[int, ...] = ()  # per repeating block, from the file's tensors
    output_bytes: int = 0  # output norm and head (the input embeddings when they are tied)
    input_bytes: int = 0  # token embeddings: llama.cpp keeps them on the CPU
    flash_attn: str = "auto"  # auto | on | off, as llama.cpp's --flash-attn
    adapters: tuple[LoraAdapter, ...] = ()  # LoRA adapters loaded beside the base (gguf/lora.py)
    mmproj: Path | None = None  # the vision projector (gguf/vision.py); on the GPU with the model
    mmproj_bytes: int = 0
    encoder_bytes: int = 0  # the vision encoder's working memory for one image tile

    @property
    def pooled(self) -> bool:
        """An embedding model or a reranker: one pooled output per input, no generation."""
        return self.embedding or self.rerank

    def estimate(self) -> MemoryEstimate:
        """The base's weights and KV pool (image tokens take cells in it like text), plus the adapters,
        the vision projector and its encoder's working memory, which live beside the model."""
        kv = 0 if self.pooled else self.kv_bytes_per_token * self.context_length
        beside = sum(a.bytes for a in self.adapters) + self.mmproj_bytes
        if self.device == "cpu":
            return MemoryEstimate(weights_mb=(self.file_bytes + beside) / MIB, kv_cache_mb=kv / MIB,
                                  activations_mb=self.encoder_bytes / MIB, buffers_mb=BUFFERS_MB,
                                  runtime_mb=self.runtime_mb)
        blocks = len(self.layer_bytes)
        if blocks and 0 <= self.n_gpu_layers <= blocks:  # partial offload: the rest stays in RAM
            on_gpu = max(self.n_gpu_layers - 1, 0)
            weights = sum(self.layer_bytes[blocks - on_gpu:]) + (self.output_bytes if self.n_gpu_layers else 0)
            kv_gpu = kv * on_gpu / blocks
        else:
            weights = self.file_bytes - self.input_bytes
            kv_gpu = kv
        host = self.file_bytes - weights + kv - kv_gpu
        return MemoryEstimate(weights_mb=(weights + beside) / MIB, kv_cache_mb=kv_gpu / MIB,
                              activations_mb=self.encoder_bytes / MIB, buffers_mb=BUFFERS_MB,
                              runtime_mb=self.runtime_mb, host_mb=host / MIB)

    def offload_split(self, room_mb: float) -> int | None:
        """The most layers (llama.cpp's n_gpu_layers, output layer first) whose device part fits in
        `room_mb`, short of all of them; None when not even the output layer fits."""
        best = None
        for layers in range(1, len(self.layer_bytes) + 1):
            if dataclasses.replace(self, n_gpu_layers=layers).estimate().total_mb > room_mb:
                break
            best = layers
        return best

    def parallel(self) -> int | None:
        return POOLED_PARALLEL if self.pooled else self.n_parallel

    def warm_files(self) -> tuple[Path, ...]:
        return (self.path, *((self.mmproj,) if self.mmproj else ()), *(a.path for a in self.adapters))

    def warm_mb(self) -> float:
        return (self.file_bytes + self.mmproj_bytes + sum(a.bytes for a in self.adapters)) / MIB

    def from_warm(self, location: Path) -> GgufPlan:
        return dataclasses.replace(self, path=location, source="ram")
