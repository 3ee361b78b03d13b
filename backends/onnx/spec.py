"""An ONNX model's models.yaml entry and how it resolves to a load plan (no onnxruntime import)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backends import checkpoint
from backends.capability import Capability
from backends.onnx.plan import OnnxPlan
from backends.plan import Device
from backends.spec import BaseSpec, pick_device

GRAPHS = ("model.onnx", "onnx/model.onnx")  # where exports put the graph, in the order looked for


class OnnxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["auto", "embedding", "rerank"] = Field(
        "auto", description="auto: rerank for a ...ForSequenceClassification export, else embeddings.")
    file: str | None = Field(None, max_length=255, pattern=r"^[A-Za-z0-9._/-]+\.onnx$",
                             description="The graph inside the directory, e.g. model_quantized.onnx (int8).")
    pooling: Literal["mean", "cls"] = Field("mean", description="How token states become one embedding.")
    threads: int = Field(0, ge=0, le=256, description="Intra-op threads; 0: ONNX Runtime's default.")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class OnnxSpec(BaseSpec):
    backend: Literal["onnx"]
    path: Path = Field(description="A directory with the .onnx graph and tokenizer.json.")
    options: OnnxOptions = OnnxOptions()

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.RERANK if self._task() == "rerank" else Capability.EMBEDDING})

    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def _task(self) -> Literal["embedding", "rerank"]:
        if self.options.task != "auto":
            return self.options.task
        architectures = checkpoint.config(self.path).get("architectures") or []
        return "rerank" if any(a.endswith("ForSequenceClassification") for a in architectures) else "embedding"

    def _graph(self) -> Path:
        if self.options.file:
            return self.path / self.options.file
        return next((self.path / name for name in GRAPHS if (self.path / name).is_file()), self.path / GRAPHS[0])

    def resolve(self, device: Device) -> OnnxPlan:
        config = checkpoint.config(self.path)
        graph = self._graph()
        size = sum(p.stat().st_size for p in (graph, graph.with_name(graph.name + ".data")) if p.is_file())
        context = self.context_length or int(config.get("max_position_embeddings") or 512)
        return OnnxPlan(
            **self.base_plan(device, context_length=context, on=pick_device(self.options.device, device)),
            path=self.path, graph=graph, task=self._task(), pooling=self.options.pooling, threads=self.options.threads,
            graph_bytes=size, hidden=int(config.get("hidden_size") or 768), layers=int(config.get("num_hidden_layers") or 12))
