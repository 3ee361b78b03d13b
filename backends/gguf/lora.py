"""LoRA adapters for a loaded GGUF model through llama.cpp's adapter API (GGUF files with
`general.type = adapter`, `adapter.type = lora`).

Each declared adapter is loaded once, beside its base, when the worker starts; the base is never
reloaded. llama.cpp applies adapters to a whole context, not per sequence, so the scheduler decodes
one adapter's sequences per step and calls `use(name)` when the turn passes to another.

A file is checked with the `gguf` reader before llama.cpp sees it (type, architecture, every
tensor's base weight and shapes): a malformed adapter, or one made for another model, gets a clear
message on its requests while the base and the other adapters keep serving, rather than an abort
inside llama.cpp.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from backends.contract import ErrorCode, InvalidInput
from backends.plan import LoraAdapter


class AdapterFileError(ValueError):
    """The adapter file is not a LoRA for this model."""


def file_bytes(path: Path) -> int:
    """What an adapter takes in memory: its file (0 when unreadable)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def base_weights(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """A base model file's architecture and weight shapes (gguf order: innermost dimension first)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return str(_value(reader.fields["general.architecture"])), {t.name: tuple(int(d) for d in t.shape)
                                                                  for t in reader.tensors}


def check(path: Path, architecture: str, base_shapes: dict[str, tuple[int, ...]]) -> None:
    """AdapterFileError unless `path` is a LoRA GGUF for a model of `architecture` whose weights
    have `base_shapes` (name -> shape, as base_weights gives them)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises assorted errors on garbage
        raise AdapterFileError(f"{path.name} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    meta = {name: _value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise AdapterFileError(f"{path.name} is not a LoRA adapter (general.type {meta.get('general.type')!r}, "
                               f"adapter.type {meta.get('adapter.type')!r})")
    if meta.get("general.architecture") != architecture:
        raise AdapterFileError(f"{path.name} is a LoRA for {meta.get('general.architecture')!r} models; "
                               f"this model is {architecture!r}")
    tensors = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    if not tensors:
        raise AdapterFileError(f"{path.name} has no tensors")
    for name, shape in tensors.items():
        base, _, part = name.rpartition(".")
        if part not in ("lora_a", "lora_b") or base not in base_shapes:
            raise AdapterFileError(f"{path.name}: tensor {name!r} adapts no weight of this model")
        partner = "lora_b" if part == "lora_a" else "lora_a"
        other = tensors.get(f"{base}.{partner}")
        if other is None:
            raise AdapterFileError(f"{path.name}: tensor {name!r} has no matching {partner}")
        # gguf lists dimensions innermost first: a weight (n_in, n_out), lora_a (n_in, r), lora_b (r, n_out)
        n_in, n_out = base_shapes[base][0], base_shapes[base][1]
        a, b = (shape, other) if part == "lora_a" else (other, shape)
        if a[0] != n_in or b[1] != n_out or a[1] != b[0]:
            raise AdapterFileError(f"{path.name}: {base} is {n_in}x{n_out} in this model; the adapter's "
                                   f"lora_a is {a} and lora_b {b}")


def _value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:
        return None


class Loras:
    """The adapters of one loaded model: loaded when the worker starts, set on the context per group."""

    def __init__(self, lc, model, ctx, adapters: tuple[LoraAdapter, ...], base: Path):
        self._lc, self._ctx = lc, ctx
        self._loaded: dict[str, tuple[Any, float]] = {}  # name -> (llama_adapter_lora pointer, scale)
        self._failed: dict[str, str] = {}
        self.declared = {a.name: a for a in adapters}
        architecture, base_shapes = base_weights(base) if adapters else ("", {})
        for adapter in adapters:
            try:
                check(adapter.path, architecture, base_shapes)
            except AdapterFileError as exc:
                self._failed[adapter.name] = str(exc)
                continue
            pointer = lc.llama_adapter_lora_init(model, str(adapter.path).encode())
            if not pointer:
                self._failed[adapter.name] = f"llama.cpp could not load {adapter.path.name} as a LoRA for this model"
                continue
            self._loaded[adapter.name] = (pointer, adapter.scale)

    def require(self, name: str | None, model_id: str) -> str | None:
        """`name` if the request may use it (None: the base), else InvalidInput saying why."""
        if name is None or name in self._loaded:
            return name
        if name in self._failed:
            raise InvalidInput(f"adapter {name!r} of model {model_id} failed to load: {self._failed[name]}",
                               param="model", code=ErrorCode.ADAPTER_LOAD_FAILED)
        raise InvalidInput(f"model {model_id} has no adapter {name!r}", param="model")

    def use(self, name: str | None) -> None:
        """Decode with adapter `name` from the next step on (None: the base alone)."""
        if name is None:
            code = self._lc.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            pointer, scale = self._loaded[name]
            array = (self._lc.llama_adapter_lora_p_ctypes * 1)(pointer)
            code = self._lc.llama_set_adapters_lora(self._ctx, array, 1, (ctypes.c_float * 1)(scale))
        if code != 0:
            raise RuntimeError(f"llama.cpp could not set adapter {name!r} (code {code})")

    def state(self) -> dict[str, str]:
        """Each declared adapter: "loaded", or why it failed."""
        return {name: "loaded" if name in self._loaded else f"failed: {self._failed.get(name, '?')}"
                for name in self.declared}

    def memory_bytes(self) -> int:
        return sum(file_bytes(self.declared[name].path) for name in self._loaded)

    def close(self) -> None:
        for pointer, _ in self._loaded.values():
            self._lc.llama_adapter_lora_free(pointer)
        self._loaded.clear()
