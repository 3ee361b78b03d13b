"""models.yaml -> typed model specs (a discriminated union on `backend`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from backends.capability import Capability

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
FOREVER = -1.0


def parse_keep_alive(value: Any) -> float:
    """Seconds from 300, "300", "5m", "1h", "-1"; any negative means forever (-1.0)."""
    if isinstance(value, bool) or value is None:
        raise ValueError("keep_alive must be seconds or a duration like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"keep_alive {value!r} is not seconds or a duration like '5m'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError("keep_alive must be finite")
    return FOREVER if seconds < 0 else seconds


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:/@+-]+$")
    aliases: tuple[str, ...] = ()
    keep_alive: float = Field(300.0, description="Seconds idle before unloading; -1 forever, 0 at once.")
    pinned: bool = False
    memory_mb: int | None = Field(None, ge=1, description="Hint: the footprint if known.")
    context_length: int | None = Field(None, ge=16)
    description: str = ""

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _keep_alive(cls, value: Any) -> float:
        return parse_keep_alive(value)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def files(self) -> Iterable[Path]:
        """Model files this spec reads; they must lie inside the allowed directories."""
        return ()

    def context_limit(self) -> int | None:
        """The context window clients may plan for (None when the engine decides)."""
        return self.context_length

    def estimate_mb(self) -> int:
        """The footprint expected before loading (the arbiter adds runtime overhead)."""
        raise NotImplementedError


class FakeOptions(BaseModel):
    """The deterministic fake engine, for tests and the demo (see backends/fake.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(256, ge=1)
    load_seconds: float = Field(0.0, ge=0, le=3600)
    token_latency_s: float = Field(0.0, ge=0, le=60)
    fail_load: str | None = None
    fail_load_while_exists: str | None = Field(None, description="Fail to load while this file exists.")
    crash_after_tokens: int | None = Field(None, ge=0)
    hang_load: bool = False
    hang_generation: bool = False
    context_length: int = Field(4096, ge=16)
    allocate: bool = Field(False, description="Really allocate memory_mb (measured memory is real).")


class FakeSpec(_Spec):
    backend: Literal["fake"]
    options: FakeOptions = FakeOptions()
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.CHAT, Capability.COMPLETION})

    def estimate_mb(self) -> int:
        return self.options.memory_mb

    def context_limit(self) -> int | None:
        return self.context_length or self.options.context_length


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
    embedding: bool = Field(False, description="Also serve pooled embeddings (mean over the last hidden state).")
    device: Literal["auto", "cpu", "cuda"] = "auto"


# Bytes per element of safetensors dtypes.
_ST_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
             "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
# Context assumed for the KV estimate when models.yaml gives none: long-context models would
# otherwise reserve many GiB of cache no local request will use.
DEFAULT_HF_CONTEXT = 8192
MIB = 1024 * 1024


def cuda_visible() -> bool:
    """Whether a CUDA device is likely visible, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl")


def safetensors_header(file: Path) -> dict[str, tuple[str, int]]:
    """name -> (dtype, element count) from one .safetensors header; no weights are read."""
    with file.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length <= 0 or length > 100 * MIB:
            raise ValueError(f"{file}: not a safetensors file (header size {length})")
        header = json.loads(fh.read(length))
    return {name: (meta["dtype"], math.prod(int(d) for d in meta["shape"]))
            for name, meta in header.items() if name != "__metadata__"}


def safetensors_tensors(directory: Path) -> dict[str, tuple[str, int]]:
    """Every tensor of a directory's checkpoints; an unreadable file counts as raw bytes (the
    worker's load then reports what is wrong with it)."""
    tensors: dict[str, tuple[str, int]] = {}
    for file in sorted(directory.glob("*.safetensors")):
        try:
            tensors.update(safetensors_header(file))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
            tensors[f"{file.name}:unreadable"] = ("U8", file.stat().st_size if file.exists() else 0)
    return tensors


class HfSpec(_Spec):
    backend: Literal["hf"]
    path: Path
    options: HfOptions = HfOptions()

    @property
    def capabilities(self) -> frozenset[Capability]:  # type: ignore[override]
        """Chat and completion for a causal LM (plus embeddings when asked); an encoder embeds only."""
        if not self.is_causal():
            return frozenset({Capability.EMBEDDING})
        extra = {Capability.EMBEDDING} if self.options.embedding else set()
        return frozenset({Capability.CHAT, Capability.COMPLETION, *extra})



    def files(self) -> Iterable[Path]:
        return (self.path,)

    def config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            return {}

    def quantization(self) -> str:
        """none | 4bit | 8bit | gptq, with GPTQ recognised from the checkpoint's own config."""
        method = (self.config().get("quantization_config") or {}).get("quant_method")
        return "gptq" if method == "gptq" else self.options.quantization

    def device(self) -> str:
        if self.options.device != "auto":
            return self.options.device
        return "cuda" if cuda_visible() else "cpu"

    def compute_dtype(self) -> str:
        """The dtype unquantized weights and activations run in (see backends/hf_text.py)."""
        if self.options.dtype != "auto":
            return self.options.dtype
        if self.device() == "cpu":
            return "float32"
        stored = self.config().get("torch_dtype") or self.config().get("dtype") or "float16"
        return stored if stored in _DTYPE_BYTES else "float16"

    def context_limit(self) -> int | None:
        if self.context_length:
            return self.context_length
        config = self.config()
        limit = config.get("max_position_embeddings") or config.get("n_positions") or DEFAULT_HF_CONTEXT
        return min(int(limit), DEFAULT_HF_CONTEXT)

    def estimate_mb(self) -> int:
        slack = 64 * MIB  # allocator slack, tokenizer, Python objects
        return int((self.weight_bytes() + self.kv_bytes() + self.activation_bytes() + slack) / MIB)

    def _text_config(self) -> dict[str, Any]:
        config = self.config()
        return config.get("text_config") or config

    def weight_bytes(self) -> float:
        """Weights as they will sit in memory: file tensors at the compute dtype, scaled by quantization."""
        element = _DTYPE_BYTES[self.compute_dtype()]
        quant = self.quantization()
        total = 0.0
        for name, (dtype, count) in safetensors_tensors(self.path).items():
            if dtype not in ("F16", "BF16", "F32", "F64"):
                total += count * _ST_BYTES.get(dtype, 4)  # packed GPTQ weights and indices: as stored
            elif quant in ("4bit", "8bit") and _quantizable(name, count):
                # bitsandbytes: 4-bit is half a byte per weight plus a float32 absmax per 64 weights;
                # 8-bit is a byte per weight plus a float32 scale per row (rounded up).
                total += count * (0.5 + 4 / 64) if quant == "4bit" else count * 1.02
            elif quant == "gptq" and name.endswith(".scales"):
                total += count * 2  # GPTQ scales stay float16
            else:
                total += count * element
        return total

    def kv_bytes(self) -> float:
        """A full-context KV cache for one sequence (requests are served one at a time)."""
        if not self.is_causal():
            return 0.0
        text = self._text_config()
        layers = int(text.get("num_hidden_layers") or text.get("n_layer") or 0)
        heads = int(text.get("num_attention_heads") or text.get("n_head") or 1)
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or (int(text.get("hidden_size") or 0) // heads))
        return 2.0 * layers * kv_heads * head_dim * (self.context_limit() or DEFAULT_HF_CONTEXT) \
            * _DTYPE_BYTES[self.compute_dtype()]

    def activation_bytes(self) -> float:
        """One full-context prefill's hidden states plus a few float32 rows of logits."""
        text = self._text_config()
        hidden = int(text.get("hidden_size") or text.get("n_embd") or 0)
        intermediate = int(text.get("intermediate_size") or 4 * hidden)
        context = self.context_limit() or DEFAULT_HF_CONTEXT
        element = _DTYPE_BYTES[self.compute_dtype()]
        return context * (4 * hidden + 2 * intermediate) * element + int(text.get("vocab_size") or 0) * 4 * 4

    def is_causal(self) -> bool:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in self.config().get("architectures") or [])


def _quantizable(name: str, count: int) -> bool:
    """bitsandbytes replaces Linear layers, except the output head; embeddings and norms stay."""
    return (name.endswith(".weight") and count >= 4096 and "embed" not in name and "lm_head" not in name
            and "norm" not in name and "wte" not in name and "wpe" not in name)


# ---- images and speech -----------------------------------------------------------------------

_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


def parse_size(value: str) -> tuple[int, int]:
    """'512x768' -> (512, 768); ValueError otherwise."""
    match = _SIZE.match(str(value).strip())
    if not match:
        raise ValueError(f"size {value!r} is not WIDTHxHEIGHT, e.g. 512x512")
    return int(match.group(1)), int(match.group(2))


def safetensors_parameters(path: Path) -> dict[str, int]:
    """Element counts per dtype in one .safetensors file."""
    counts: dict[str, int] = {}
    for dtype, count in safetensors_header(path).values():
        counts[dtype] = counts.get(dtype, 0) + count
    return counts


def _weights_mb(files: Iterable[Path], runtime_bytes: int | None) -> float:
    """Weights at the runtime dtype (floats converted; integer tensors as stored)."""
    total = 0
    for path in files:
        for dtype, count in safetensors_parameters(path).items():
            stored = _ST_BYTES.get(dtype, 4)
            floating = dtype.startswith(("F", "BF"))
            total += count * (runtime_bytes if runtime_bytes and floating else stored)
    return total / MIB


Scheduler = Literal["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
                    "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler",
                    "KDPM2DiscreteScheduler", "DEISMultistepScheduler", "LCMScheduler"]


class DiffusionOptions(BaseModel):
    """A diffusers text-to-image pipeline (SD 1.x/2.x, SDXL, turbo-style), safetensors only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Literal["auto", "sd", "sdxl"] = Field(
        "auto", description="auto reads model_index.json; a single .safetensors file needs sd or sdxl.")
    config: Path | None = Field(None, description="For a single-file checkpoint: a local diffusers directory "
                                                  "of the same architecture, for the component configs.")
    scheduler: Scheduler | None = Field(None, description="Replace the pipeline's scheduler (same config).")
    default_steps: int = Field(30, ge=1, le=500)
    max_steps: int = Field(100, ge=1, le=500)
    default_size: str = "512x512"
    sizes: tuple[str, ...] = Field((), description="Allowed sizes; empty: any multiple of 8 within the bounds.")
    min_side: int = Field(64, ge=8, le=8192)
    max_side: int = Field(1024, ge=8, le=8192)
    max_pixels: int = Field(1024 * 1024, ge=64, description="Cap on width*height.")
    default_guidance: float = Field(7.5, ge=0, le=50, allow_inf_nan=False)
    max_guidance: float = Field(30.0, ge=0, le=50, allow_inf_nan=False)
    max_n: int = Field(4, ge=1, le=16)
    safety_checker: bool = Field(False, description="Run the pipeline's safety checker (off for local use).")
    device: Literal["auto", "cuda", "cpu"] = "auto"

    @field_validator("default_size")
    @classmethod
    def _default_size(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for size in value:
            parse_size(size)
        return value

    def size_error(self, width: int, height: int) -> str | None:
        """Why this model cannot make a width x height image, or None if it can."""
        if self.sizes:
            if f"{width}x{height}" not in self.sizes:
                return f"size {width}x{height} is not one of this model's sizes: {', '.join(self.sizes)}"
            return None
        if width % 8 or height % 8:
            return f"size {width}x{height}: width and height must be multiples of 8"
        if not (self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side):
            return f"size {width}x{height}: each side must be between {self.min_side} and {self.max_side}"
        if width * height > self.max_pixels:
            return f"size {width}x{height} exceeds {self.max_pixels} pixels"
        return None

    def largest_pixels(self) -> int:
        if self.sizes:
            return max(w * h for w, h in map(parse_size, self.sizes))
        return min(self.max_pixels, self.max_side * self.max_side)


class DiffusionSpec(_Spec):
    backend: Literal["diffusers"]
    path: Path = Field(description="A diffusers directory (model_index.json) or one .safetensors checkpoint.")
    options: DiffusionOptions = DiffusionOptions()
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.IMAGE})

    def files(self) -> Iterable[Path]:
        return (self.path, self.options.config) if self.options.config else (self.path,)

    def weight_files(self) -> list[Path]:
        """The component weights the pipeline loads (the safety checker only when it runs)."""
        if self.path.is_file():
            return [self.path]
        skip = set() if self.options.safety_checker else {"safety_checker"}
        return sorted(p for p in self.path.glob("*/*.safetensors") if p.parent.name not in skip)

    def estimate_mb(self) -> int:
        runtime_bytes = 4 if self.options.device == "cpu" else 2  # fp16 on a GPU, fp32 on CPU
        weights = _weights_mb(self.weight_files(), runtime_bytes)
        return int(weights + self.activations_mb(self.options.largest_pixels(), runtime_bytes))

    def activations_mb(self, pixels: int, runtime_bytes: int) -> float:
        """Peak UNet/VAE activations for one image: ~1.5 GiB at 512x512 fp16 for SD-1.5's 320-wide UNet,
        scaled by pixels, dtype width and the UNet's first block width (read from its config.json)."""
        width = 320
        pipeline_dir = self.path if self.path.is_dir() else self.options.config
        config = pipeline_dir / "unet" / "config.json" if pipeline_dir else None
        if config is not None and config.is_file():
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                width = int(json.loads(config.read_text())["block_out_channels"][0])
        return 1536 * (pixels / (512 * 512)) * (width / 320) * (runtime_bytes / 2)


ComputeType = Literal["default", "auto", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "int16",
                      "float16", "bfloat16", "float32"]


class WhisperOptions(BaseModel):
    """faster-whisper on CTranslate2 (a converted model directory: model.bin, tokenizer.json, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute_type: ComputeType = Field("default", description="CTranslate2 compute type (int8 is fastest on CPU).")
    beam_size: int = Field(5, ge=1, le=16)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    cpu_threads: int = Field(0, ge=0, le=256, description="0: CTranslate2's default.")
    max_audio_seconds: float = Field(1800.0, gt=0, le=4 * 3600, allow_inf_nan=False,
                                     description="Longest decoded audio accepted (400 beyond).")
    max_new_tokens: int | None = Field(None, ge=1, le=448, description="Cap on tokens per 30 s window.")


class WhisperSpec(_Spec):
    backend: Literal["faster-whisper"]
    path: Path = Field(description="A CTranslate2 Whisper directory (ct2-transformers-converter output).")
    options: WhisperOptions = WhisperOptions()
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.TRANSCRIPTION})

    def files(self) -> Iterable[Path]:
        return (self.path,)

    def estimate_mb(self) -> int:
        model = self.path / "model.bin"
        stored = model.stat().st_size / MIB if model.is_file() else 0.0
        # model.bin is saved as float16 by the usual conversion; scale to the compute type's width.
        scale = {"float32": 2.0, "int8": 0.5, "int8_float32": 0.5, "int8_float16": 0.5,
                 "int8_bfloat16": 0.5}.get(self.options.compute_type, 1.0)
        weights = stored * scale
        # Encoder activations for a 30 s window and the decoder's beams grow with the model's width.
        return int(weights * (1.0 + 0.05 * self.options.beam_size) + 32)


class GgufOptions(BaseModel):
    """llama-cpp-python settings for one GGUF file (see backends/gguf.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_ctx: int | None = Field(None, ge=16, le=1_048_576, description="Context window; default min(trained, 4096).")
    n_gpu_layers: int | None = Field(None, ge=-1, description="Layers on the GPU; default all when one is visible.")
    n_threads: int | None = Field(None, ge=1, le=512, description="Also used for prompts and batched steps.")
    n_parallel: int = Field(4, ge=1, le=64, description="Requests decoded together in one batch (shared KV pool).")
    chat_template: str | None = Field(None, max_length=200_000, description="Overrides the GGUF's template.")
    embedding: bool = Field(False, description="Serve /v1/embeddings (pooled) instead of text generation.")


GGUF_DEFAULT_CONTEXT = 4096
GGUF_OVERHEAD_MB = 48  # llama.cpp's compute and output buffers for a small model, roughly


class GgufSpec(_Spec):
    backend: Literal["gguf"]
    path: Path
    options: GgufOptions = GgufOptions()

    @property
    def capabilities(self) -> frozenset[Capability]:  # type: ignore[override]
        if self.options.embedding:
            return frozenset({Capability.EMBEDDING})
        return frozenset({Capability.CHAT, Capability.COMPLETION})

    def files(self) -> Iterable[Path]:
        return (self.path,)

    def _file(self):
        from backends.gguf_file import GgufFile, GgufFileError

        try:
            return GgufFile.read(self.path)
        except GgufFileError:
            return None  # the load reports the problem; estimates fall back to the file size

    def n_ctx(self, info=None) -> int | None:
        if self.options.n_ctx:
            return self.options.n_ctx
        info = info or self._file()
        return min(info.context_length, GGUF_DEFAULT_CONTEXT) if info else None

    def context_limit(self) -> int | None:
        return self.context_length or self.n_ctx()

    def estimate_mb(self) -> int:
        info = self._file()
        if info is None:
            size = self.path.stat().st_size if self.path.exists() else 0
            return int(size / 2**20) + GGUF_OVERHEAD_MB
        kv = 0 if self.options.embedding else info.kv_cache_bytes(self.n_ctx(info) or GGUF_DEFAULT_CONTEXT)
        return int((info.size_bytes + kv) / 2**20) + GGUF_OVERHEAD_MB


ModelSpec = Annotated[FakeSpec | GgufSpec | HfSpec | DiffusionSpec | WhisperSpec, Field(discriminator="backend")]
_SPEC_ADAPTER: TypeAdapter = TypeAdapter(ModelSpec)


class RegistryError(Exception):
    """models.yaml is unusable; the message names the file, the model and the field."""


class Registry:
    """The models a client may ask for, by id or alias."""

    def __init__(self, specs: list, source: Path | None = None):
        self.source = source
        self._specs = {spec.id: spec for spec in specs}
        self._names: dict[str, Any] = {}
        for spec in specs:
            for name in spec.names:
                if name in self._names:
                    where = f"{source}: " if source else ""
                    raise RegistryError(f"{where}model {spec.id!r}: name {name!r} is already used")
                self._names[name] = spec

    def resolve(self, name: str):
        """The spec for a client-facing name, or None."""
        return self._names.get(name)

    def get(self, model_id: str):
        return self._specs[model_id]

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


def parse_registry(data: Any, source: Path, allowed_dirs: list[Path] | None = None) -> Registry:
    where = str(source)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise RegistryError(f"{where}: expected a mapping with a 'models' list")
    specs = []
    for index, raw in enumerate(data["models"]):
        label = raw.get("id", f"#{index}") if isinstance(raw, dict) else f"#{index}"
        if isinstance(raw, dict) and "path" in raw:
            raw = {**raw, "path": str(_resolve_path(raw["path"], source.parent))}
        try:
            spec = _SPEC_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"][1:] if p) or "backend"
            raise RegistryError(f"{where}: model {label!r}: field {field!r}: {first['msg']}") from None
        for path in spec.files():
            _check_inside(path, allowed_dirs, where, spec.id)
        specs.append(spec)
    return Registry(specs, source)


def load_registry(path: Path, allowed_dirs: list[Path] | None = None) -> Registry:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the model registry: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    return parse_registry(data, path, allowed_dirs)


def _resolve_path(value: Any, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _check_inside(path: Path, allowed: list[Path] | None, where: str, model_id: str) -> None:
    if not allowed:
        return
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in allowed):
        raise RegistryError(
            f"{where}: model {model_id!r}: field 'path': {resolved} is outside the allowed model "
            f"directories ({', '.join(str(d) for d in allowed)})"
        )
