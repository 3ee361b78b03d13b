"""An ONNX model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from backends.plan import MIB, LoadPlan, MemoryEstimate

BATCH = 16  # inputs (or query-document pairs) run in one session call
BUFFERS_MB = 32  # ONNX Runtime's arena and the tokenizer


@dataclass(frozen=True, kw_only=True)
class OnnxPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.onnx.adapter:OnnxAdapter"

    path: Path  # the model directory (tokenizer.json beside the graph)
    graph: Path  # the .onnx file run
    task: Literal["embedding", "rerank"]
    context_length: int
    pooling: Literal["mean", "cls"]
    threads: int  # 0: ONNX Runtime's default
    graph_bytes: int  # the graph and its external data
    hidden: int
    layers: int

    def estimate(self) -> MemoryEstimate:
        # One batch of full-length inputs: hidden states and attention scores per layer, in float32.
        activations = BATCH * self.context_length * (6 * self.hidden + self.context_length) * 4 * max(self.layers, 1)
        return MemoryEstimate(weights_mb=self.graph_bytes / MIB, activations_mb=activations / MIB,
                              buffers_mb=BUFFERS_MB, runtime_mb=self.runtime_mb)
