"""A GGUF model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from backends.plan import MIB, LoadPlan, MemoryEstimate

BUFFERS_MB = 48  # llama.cpp's compute and output buffers for a small model, roughly


@dataclass(frozen=True, kw_only=True)
class GgufPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.gguf.adapter:GgufAdapter"

    path: Path
    context_length: int  # n_ctx: the one KV pool every parallel sequence shares
    n_gpu_layers: int
    n_threads: int  # single-token decode steps
    n_threads_batch: int  # prompts and batched steps
    n_parallel: int
    chat_template: str | None  # models.yaml's override; None: the file's own
    embedding: bool
    rerank: bool  # scores (query, document) pairs with the file's classification head
    file_bytes: int
    kv_bytes_per_token: int  # 0 when the file could not be read

    @property
    def pooled(self) -> bool:
        """An embedding model or a reranker: one pooled output per input, no generation."""
        return self.embedding or self.rerank

    def estimate(self) -> MemoryEstimate:
        kv = 0 if self.pooled else self.kv_bytes_per_token * self.context_length
        return MemoryEstimate(weights_mb=self.file_bytes / MIB, kv_cache_mb=kv / MIB, buffers_mb=BUFFERS_MB,
                              runtime_mb=self.runtime_mb)
