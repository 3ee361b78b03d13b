"""A Hugging Face text model's models.yaml entry and how it resolves to a load plan (no torch import)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends import safetensors, tools
from backends.capability import Capability
from backends.hf.plan import DTYPE_BYTES, HfPlan, HfRerankPlan, HfVisionPlan, Shape, VisionShape
from backends.hf.tokens import fim_in_files, template_in_files
from backends.plan import Device
from backends.spec import BaseSpec, pick_device
from backends.tools import ToolFormatOption

DEFAULT_CONTEXT = 8192  # long-context models would otherwise reserve GiBs of cache no local request uses
RERANK_BATCH = 16
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class HfOptions(BaseModel):
    """A Hugging Face transformers directory (safetensors only, never remote code)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: the checkpoint's dtype on a GPU, float32 on a CPU.")
    quantization: Literal["none", "4bit", "8bit", "gptq"] = Field(
        "none", description="bitsandbytes 4/8-bit at load; gptq is also detected from config.json.")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    double_quant: bool = Field(False, description="bitsandbytes nested quantization of the 4-bit scales.")
    chat_template: str | None = Field(None, max_length=100_000, description="Overrides the tokenizer's template.")
    tool_format: ToolFormatOption = Field("auto", description="Tool-call syntax; auto: the one the template teaches.")
    embedding: bool = Field(False, description="Also serve pooled embeddings (mean over the last hidden state).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decode: Literal["auto", "dynamic", "static", "cuda-graphs"] = Field(
        "auto", description="The decode loop's KV cache: auto is cuda-graphs for an unquantized model on a GPU, "
        "static for a quantized one, dynamic on a CPU (backends/hf/decode.py); vision models decode dynamic.")
    n_threads: int | None = Field(None, ge=1, le=512, description="torch's threads on a CPU. Unset: half the cores for a "
                                  "generating model, as llama.cpp's default (a decode step's small products wait "
                                  "on their slowest thread, and one sharing a core with the HTTP process stalls "
                                  "every step); torch's own for embeddings and rerank.")
    max_images: int = Field(4, ge=1, le=64, description="Images one request may carry (vision models; BLIP: 1).")
    n_parallel: int = Field(4, ge=1, le=64, description="Requests decoded together in one batch on the dynamic "
                            "decode path (the static and cuda-graphs paths decode one at a time); their rows "
                            "share the one context the memory estimate counts (backends/hf/batch.py).")


class HfSpec(BaseSpec):
    backend: Literal["hf"]
    path: Path
    options: HfOptions = HfOptions()

    takes_adapters: ClassVar[bool] = True  # PEFT LoRA adapters on a causal LM (backends/hf/lora.py)

    @functools.cached_property
    def capabilities(self) -> frozenset[Capability]:
        """Chat and completion for a causal LM (plus embeddings when asked), with images for a vision
        model; a cross-encoder reranks; another encoder embeds. Read once: a parked model is still
        served when its files have since gone."""
        config = self._config()
        if _is_reranker(config):
            return frozenset({Capability.RERANK})
        if _is_vision(config):
            return frozenset({Capability.CHAT, Capability.COMPLETION, Capability.VISION})
        if not _is_causal(config):
            return frozenset({Capability.EMBEDDING})
        extra = {Capability.EMBEDDING} if self.options.embedding else set()
        return frozenset({Capability.CHAT, Capability.COMPLETION, *extra})

    def files(self) -> tuple[Path, ...]:
        return (self.path, *super().files())

    @model_validator(mode="after")
    def _adapters_need_a_text_model(self) -> HfSpec:
        if self.adapters and (self.options.embedding or _is_vision(self._config())):
            raise ValueError("LoRA adapters are served for a text model's chat and completions (not embeddings, "
                             "not vision models)")
        return self

    def _config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return {}

    def resolve(self, device: Device) -> HfPlan:
        config = self._config()
        on = pick_device(self.options.device, device)
        method = (config.get("quantization_config") or {}).get("quant_method")
        quantization = "gptq" if method == "gptq" else self.options.quantization
        dtype = self.options.dtype
        if dtype == "auto":
            # CPU fp16 matmuls are emulated or missing on most CPUs, and bf16 is only fast with AMX:
            # float32 is exact and the fastest CPU path for small models.
            stored = config.get("torch_dtype") or config.get("dtype")
            dtype = "float32" if on == "cpu" else (stored if stored in DTYPE_BYTES else "float16")
        compute = self.options.bnb_4bit_compute_dtype
        vision = _is_vision(config)
        causal, reranker = _is_causal(config) or vision, _is_reranker(config)
        text = config.get("text_config") or config
        trained = int(text.get("max_position_embeddings") or text.get("n_positions") or DEFAULT_CONTEXT)
        context = self.context_length or min(trained, DEFAULT_CONTEXT)
        plan, extra = (HfRerankPlan, {"batch": RERANK_BATCH}) if reranker else (HfPlan, {})
        decode = _decode(self.options.decode, on, quantization, bool(self.adapters))
        if vision:
            plan, extra, decode = HfVisionPlan, _vision_facts(config, self.options.max_images), "dynamic"
        return plan(
            **self.base_plan(device, context_length=context, on=on, max_context_length=max(trained, context)),
            **extra, path=self.path, dtype=dtype, fim=causal and fim_in_files(self.path),
            tool_format=tools.chosen(self.options.tool_format, self.options.chat_template or template_in_files(self.path))
            if causal else None,
            quantization=quantization, bnb_4bit_quant_type=self.options.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=dtype if compute == "auto" else compute, double_quant=self.options.double_quant,
            chat_template=self.options.chat_template, causal=causal,
            embedding=self.options.embedding or not (causal or reranker),
            weights_bytes=_weights_bytes(sorted(self.path.glob("*.safetensors")), dtype, quantization),
            shape=Shape.of(config), decode=decode,
            # vision models decode one request at a time (their prompt inputs are the decoder's)
            n_parallel=self.options.n_parallel if decode == "dynamic" and not vision else 1,
            n_threads=_threads(self.options.n_threads, on, causal),
            adapters=self.lora_plans(lambda path: _weights_bytes(sorted(Path(path).glob("*.safetensors")), dtype,
                                                                 "none")))


def _threads(wanted: int | None, on: str, causal: bool) -> int:
    """torch's threads: as set; unset, half the cores for a CPU decode loop (its steps are too small
    to share among threads that wait on each other), torch's own for the rest (0)."""
    if on != "cpu":
        return 0
    return wanted or (max((os.cpu_count() or 1) // 2, 1) if causal else 0)


def _decode(wanted: str, on: str, quantization: str, adapters: bool = False) -> str:
    """models.yaml's `decode` against the device: CUDA graphs pay off only on a GPU, where per-token
    overhead dominates; quantized kernels (bitsandbytes, GPTQ) are not all compilable, so they get the
    static cache without graphs unless asked. A graph is recorded with the modules as they are, so a
    model switching LoRA adapters per request decodes with the static cache, eagerly."""
    if wanted == "cuda-graphs" and adapters:
        return "static"
    if wanted != "auto":
        return wanted
    if on != "cuda":
        return "dynamic"
    return "cuda-graphs" if quantization == "none" and not adapters else "static"


def _is_vision(config: dict[str, Any]) -> bool:
    """LLaVA, LLaVA-NeXT, BLIP-2, InstructBLIP: a vision tower feeding a text model that generates."""
    return bool(config.get("vision_config")) and any(
        a.endswith("ForConditionalGeneration") for a in config.get("architectures") or [])


def _vision_facts(config: dict[str, Any], max_images: int) -> dict[str, Any]:
    """The vision plan's own fields: BLIP models read one image (its query tokens lead the prompt);
    LLaVA-NeXT splits an image into up to its largest grid of tiles, plus an overview."""
    vision = VisionShape.of(config)
    query = "qformer_config" in config
    pinpoints = config.get("image_grid_pinpoints") or []
    tiles = max((h * w // (vision.image_size ** 2) for h, w in pinpoints), default=0) + 1
    return {"vision": vision, "tiles": tiles, "query_model": query, "image_size": vision.image_size,
            "max_images": 1 if query else max_images}


def _is_causal(config: dict[str, Any]) -> bool:
    return any(a.endswith(_CAUSAL_SUFFIXES) for a in config.get("architectures") or [])


def _is_reranker(config: dict[str, Any]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def _weights_bytes(files: list[Path], dtype: str, quantization: str) -> float:
    """File tensors at the compute dtype, scaled by quantization."""
    element = DTYPE_BYTES[dtype]
    total = 0.0
    for name, (stored, count) in safetensors.tensors(files).items():
        if stored not in safetensors.FLOATS:
            total += count * safetensors.DTYPE_BYTES.get(stored, 4)  # packed GPTQ weights and indices: as stored
        elif quantization in ("4bit", "8bit") and _quantizable(name, count):
            # bitsandbytes: 4-bit is half a byte per weight plus a float32 absmax per 64 weights;
            # 8-bit is a byte per weight plus a float32 scale per row (rounded up).
            total += count * (0.5 + 4 / 64) if quantization == "4bit" else count * 1.02
        elif quantization == "gptq" and name.endswith(".scales"):
            total += count * 2  # GPTQ scales stay float16
        else:
            total += count * element
    return total


def _quantizable(name: str, count: int) -> bool:
    """bitsandbytes replaces Linear layers, except the output head; embeddings and norms stay."""
    return (name.endswith(".weight") and count >= 4096 and "embed" not in name and "lm_head" not in name
            and "norm" not in name and "wte" not in name and "wpe" not in name)
