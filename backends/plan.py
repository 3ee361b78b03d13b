"""A load plan and its memory estimate: plain data the server computes and the worker loads.

    models.yaml entry --validate--> spec (spec.py) --resolve(device)--> LoadPlan --estimate()--> MemoryEstimate

A plan is every load-time decision (dtype, quantization, device, context, layers, threads) made once,
by the engine's spec module; the server estimates from it and sends it to the worker, whose adapter
loads exactly it. Plans are stdlib dataclasses, not pydantic models: a worker imports this module
and its engine's plan module, and starts in tens of milliseconds rather than a few hundred.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

MIB = 1024 * 1024
# Calls a pooled (embedding, rerank) model takes at once: concurrent embedding calls share forwards
# (backends/batcher.py); the worker runs the others in turn.
POOLED_PARALLEL = 16


@dataclass(frozen=True)
class Device:
    """Where models load: a CUDA card or the CPU, and what one worker's runtime costs there
    (the CUDA context and the Python process: ~300 MiB on a consumer card, ~60 MiB on a CPU)."""

    kind: Literal["cpu", "cuda"] = "cpu"
    runtime_mb: float = 0.0


@dataclass(frozen=True)
class MemoryEstimate:
    """A model's expected footprint, by part, in MiB."""

    weights_mb: float = 0.0
    kv_cache_mb: float = 0.0
    activations_mb: float = 0.0
    buffers_mb: float = 0.0  # the engine's own compute/output buffers and allocator slack
    runtime_mb: float = 0.0  # the worker process: CUDA context, interpreter, libraries
    # Parts of the model kept in system RAM outside the device (layers left on the CPU by a
    # partial offload, a whole model on the CPU beside a GPU): shown, never counted on the budget.
    host_mb: float = 0.0

    @property
    def model_mb(self) -> float:
        """What the model itself takes on the device, without its worker's runtime."""
        return self.weights_mb + self.kv_cache_mb + self.activations_mb + self.buffers_mb

    @property
    def total_mb(self) -> float:
        """The device footprint: what the budget is charged."""
        return self.model_mb + self.runtime_mb

    def on_host(self) -> MemoryEstimate:
        """The same footprint kept wholly in system RAM (a CPU plan on a machine with a GPU)."""
        return MemoryEstimate(host_mb=self.total_mb + self.host_mb)

    def breakdown(self) -> dict[str, float]:
        parts = {**dataclasses.asdict(self), "total_mb": self.total_mb}
        return {name: round(value, 1) for name, value in parts.items()}

    def __str__(self) -> str:
        parts = ", ".join(f"{name.removesuffix('_mb').replace('_', ' ')} {value:g}"
                          for name, value in self.breakdown().items() if value and name != "total_mb")
        return f"{self.total_mb:.0f} MiB ({parts or 'nothing'})"


ParkForm = Literal["none", "files", "bundle"]


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter declared for a model (models.yaml `adapters`): loaded beside its base in the same
    worker, chosen per request as `<model>:<name>`."""

    name: str
    path: Path  # llama.cpp: a GGUF with adapter.type = lora; Hugging Face: a PEFT adapter directory
    scale: float = 1.0
    bytes: int = 0  # its weights as they sit in memory, from the file headers (0: unreadable)


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    """Every decision a load makes, made before it; an engine's plan adds its own fields."""

    adapter: ClassVar[str]  # "package.module:Class" the worker imports to load this plan
    # How a parked model of this engine waits in system RAM (the warm tier, server/warm.py):
    #   files:  the server keeps warm_files() resident in the page cache (mmapped weights: GGUF);
    #   bundle: the worker writes its loaded form into a RAM directory (adapter.park) and a new
    #           worker loads from it (torch weights in safetensors on tmpfs, a CTranslate2 copy);
    #   none:   the engine cannot park; an evicted model is dropped.
    park_form: ClassVar[ParkForm] = "none"

    backend: str
    model_id: str
    device: Literal["cpu", "cuda"]
    runtime_mb: float = 0.0
    context_length: int | None = None  # the window clients may plan for (None: not a text model)
    max_context_length: int | None = None  # the window the model was trained for (context_length <= it)
    fim: bool = False  # completions take a suffix (the model has fill-in-the-middle tokens)
    tool_format: str | None = None  # a chat model's tool-call syntax (backends/tools.py ToolFormat)
    # A vision model: images one request may carry (0: none, a text model), and the edge in pixels of
    # the square its encoder reads (a `detail: low` image is scaled to fit one).
    max_images: int = 0
    image_size: int | None = None
    source: Literal["disk", "ram"] = "disk"  # ram: loads from the warm tier's copy of a parked model

    def estimate(self) -> MemoryEstimate:
        raise NotImplementedError

    def parallel(self) -> int | None:
        """Requests the engine serves at once (None: no limit). The arbiter leases no more than this,
        so requests beyond it queue where admission sees them, and draining the model waits only
        for what it is serving."""
        return None

    def warm_files(self) -> tuple[Path, ...]:
        """The files a "files" park keeps resident."""
        return ()

    def warm_mb(self) -> float:
        """System RAM a parked copy is expected to take (the warm tier's budget is charged this
        until the park reports what it really wrote)."""
        return self.estimate().weights_mb

    def from_warm(self, location: Path) -> LoadPlan:
        """This very plan, loading from the warm copy at `location` instead of the model's files."""
        raise NotImplementedError(f"{self.backend} models do not park")

    def to_json(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadPlan:
        return _build(cls, data)


def type_name(kind: type) -> str:
    """"package.module:Class", the form the worker imports a plan or adapter class by."""
    return f"{kind.__module__}:{kind.__qualname__}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _build(kind: type, data: dict[str, Any]) -> Any:
    """A dataclass from its to_json() form: paths, tuples and nested dataclasses restored."""
    hints = typing.get_type_hints(kind)
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(data) - names
    if unknown:
        raise TypeError(f"{kind.__name__} has no field {', '.join(sorted(unknown))}")
    return kind(**{name: _coerce(hints[name], value) for name, value in data.items()})


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        origin = typing.get_origin(hint)
    if hint is Path:
        return Path(value)
    if origin is tuple:
        return tuple(_coerce(typing.get_args(hint)[0], v) for v in value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    return value
