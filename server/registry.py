"""models.yaml -> typed model specs (a discriminated union on `backend`)."""

from __future__ import annotations

import re
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


ModelSpec = Annotated[FakeSpec | GgufSpec, Field(discriminator="backend")]
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
