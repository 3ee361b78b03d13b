"""A Hugging Face text model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from backends.plan import MIB, POOLED_PARALLEL, LoadPlan, LoraAdapter, MemoryEstimate

SLACK_MB = 64  # allocator slack, tokenizer, Python objects
DType = Literal["float16", "bfloat16", "float32"]
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class Shape:
    """The sizes config.json gives, as the estimate needs them."""

    layers: int = 0
    kv_heads: int = 1
    head_dim: int = 0
    hidden: int = 0
    intermediate: int = 0
    vocab: int = 0

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shape:
        text = config.get("text_config") or config
        heads = int(text.get("num_attention_heads") or text.get("n_head") or 1)
        hidden = int(text.get("hidden_size") or text.get("n_embd") or 0)
        return cls(layers=int(text.get("num_hidden_layers") or text.get("n_layer") or 0),
                   kv_heads=int(text.get("num_key_value_heads") or heads),
                   head_dim=int(text.get("head_dim") or hidden // heads), hidden=hidden,
                   intermediate=int(text.get("intermediate_size") or 4 * hidden),
                   vocab=int(text.get("vocab_size") or 0))


@dataclass(frozen=True, kw_only=True)
class HfPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.hf.adapter:HfTextAdapter"
    # Parked as the loaded form (quantized weights included) in safetensors on tmpfs: a new
    # worker loads it without reading the disk or quantizing again.
    park_form: ClassVar[str] = "bundle"

    path: Path
    context_length: int
    dtype: DType  # unquantized weights and activations
    quantization: Literal["none", "4bit", "8bit", "gptq"]
    bnb_4bit_quant_type: Literal["nf4", "fp4"]
    bnb_4bit_compute_dtype: DType
    double_quant: bool
    chat_template: str | None  # models.yaml's override; None: the tokenizer's own
    causal: bool  # a causal LM generates text; anything else only embeds
    embedding: bool  # serves pooled embeddings
    weights_bytes: float  # as they will sit in memory, from the safetensors headers
    shape: Shape
    decode: Literal["dynamic", "static", "cuda-graphs"] = "dynamic"  # backends/hf/decode.py
    n_parallel: int = 1  # requests decoded together (backends/hf/batch.py; the dynamic path only)
    n_threads: int = 0  # torch's intra-op threads on a CPU (0: torch's own)
    adapters: tuple[LoraAdapter, ...] = ()  # PEFT LoRA adapters loaded beside the base (backends/hf/lora.py)

    def estimate(self) -> MemoryEstimate:
        element = DTYPE_BYTES[self.dtype]
        s = self.shape
        # One full context of KV: batched requests share it (backends/hf/batch.py admits within it);
        # image tokens take their positions in it like text.
        kv = 2.0 * s.layers * s.kv_heads * s.head_dim * self.context_length * element if self.causal else 0.0
        # One full-context prefill's hidden states plus a few float32 rows of logits.
        activations = self.context_length * (4 * s.hidden + 2 * s.intermediate) * element + s.vocab * 4 * 4
        weights = self.weights_bytes + sum(a.bytes for a in self.adapters)
        return MemoryEstimate(weights_mb=weights / MIB, kv_cache_mb=kv / MIB,
                              activations_mb=activations / MIB, buffers_mb=SLACK_MB, runtime_mb=self.runtime_mb)

    def parallel(self) -> int | None:
        if not self.causal:
            return POOLED_PARALLEL  # concurrent embedding calls share forwards (backends/batcher.py)
        return self.n_parallel

    def warm_mb(self) -> float:
        return self.weights_bytes / MIB

    def from_warm(self, location: Path) -> HfPlan:
        return dataclasses.replace(self, path=location, source="ram")


@dataclass(frozen=True)
class VisionShape:
    """A vision tower's sizes, from config.json's vision_config."""

    image_size: int = 224
    patch_size: int = 14
    hidden: int = 0
    intermediate: int = 0
    heads: int = 1

    @classmethod
    def of(cls, config: dict[str, Any]) -> VisionShape:
        vision = config.get("vision_config") or {}
        hidden = int(vision.get("hidden_size") or 1024)
        return cls(image_size=int(vision.get("image_size") or 224), patch_size=int(vision.get("patch_size") or 14),
                   hidden=hidden, intermediate=int(vision.get("intermediate_size") or 4 * hidden),
                   heads=int(vision.get("num_attention_heads") or 16))

    def encoder_bytes(self, element: int) -> float:
        """One image tile through the tower: hidden states, the FFN and the attention scores."""
        patches = (self.image_size // self.patch_size) ** 2 + 1
        return element * (patches * (4 * self.hidden + 2 * self.intermediate) + self.heads * patches * patches)


@dataclass(frozen=True, kw_only=True)
class HfVisionPlan(HfPlan):
    """A vision-language model (LLaVA, LLaVA-NeXT, BLIP-2, InstructBLIP) read through its processor."""

    adapter: ClassVar[str] = "backends.hf.vision:HfVisionAdapter"
    vision: VisionShape
    tiles: int = 1  # most tiles one image becomes (LLaVA-NeXT's grids, plus the overview)
    query_model: bool = False  # BLIP-2 style: a Q-Former feeds a language model that decodes on its own

    def estimate(self) -> MemoryEstimate:
        """The text model's, plus the tower reading a request's images (the tower's and projector's
        weights are in the checkpoint's weights already)."""
        base = super().estimate()
        encoder = self.max_images * self.tiles * self.vision.encoder_bytes(DTYPE_BYTES[self.dtype])
        return dataclasses.replace(base, activations_mb=base.activations_mb + encoder / MIB)


@dataclass(frozen=True, kw_only=True)
class HfRerankPlan(HfPlan):
    """A cross-encoder (a ...ForSequenceClassification checkpoint) that scores query-document pairs."""

    adapter: ClassVar[str] = "backends.hf.reranker:HfRerankAdapter"
    park_form: ClassVar[str] = "none"  # dropped when evicted: a reranker is small and quick to load
    batch: int  # pairs read in one forward pass

    def estimate(self) -> MemoryEstimate:
        element = DTYPE_BYTES[self.dtype]
        s = self.shape
        # One batch of full-length pairs: hidden states, the FFN's and the attention scores, per layer.
        per_pair = self.context_length * (4 * s.hidden + 2 * s.intermediate + self.context_length) * element
        return MemoryEstimate(weights_mb=self.weights_bytes / MIB, activations_mb=self.batch * per_pair / MIB,
                              buffers_mb=SLACK_MB, runtime_mb=self.runtime_mb)
