"""What a GGUF file says about itself, read with the `gguf` package (no llama.cpp import).

The server uses it for memory estimates and context limits before any load; the adapter uses it
to refuse a truncated or empty file with a clear message before llama.cpp sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class GgufFileError(ValueError):
    """The file is missing, empty, truncated or not GGUF."""


@dataclass(frozen=True)
class TensorBytes:
    """Where a GGUF's weights sit, as llama.cpp places them: per repeating block, the output layer
    (output norm and head) and the input embeddings (which llama.cpp always keeps on the CPU)."""

    layers: tuple[int, ...] = ()
    output: int = 0
    input: int = 0


@dataclass(frozen=True)
class GgufFile:
    path: Path
    size_bytes: int
    metadata: dict[str, Any]
    tensors: TensorBytes = TensorBytes()

    @classmethod
    def read(cls, path: Path | str) -> GgufFile:
        from gguf import GGUFReader

        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise GgufFileError(f"cannot read GGUF file {path.name}: {exc.strerror}") from None
        if size == 0:
            raise GgufFileError(f"GGUF file {path.name} is empty (0 bytes)")
        try:
            reader = GGUFReader(path)
        except Exception as exc:  # the reader raises assorted errors on garbage
            raise GgufFileError(f"{path.name} is not a readable GGUF file (truncated or corrupt): {exc}") from None
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
        if end > size:
            raise GgufFileError(f"GGUF file {path.name} is truncated: its tensors need {end} bytes, "
                                f"the file has {size}")
        metadata = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                                    "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
                continue
            try:
                metadata[name] = field.contents()
            except Exception:
                continue
        return cls(path, size, metadata, _tensor_bytes(reader.tensors))

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "llama"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self) -> int:
        return int(self.arch_value("context_length", 2048))

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """f16 K and V for every layer: n_ctx * layers * 2 * (embedding * kv_heads / heads) * 2 bytes."""
        layers = int(self.arch_value("block_count", 0))
        embedding = int(self.arch_value("embedding_length", 0))
        heads = _first(self.arch_value("attention.head_count", 1)) or 1
        kv_heads = _first(self.arch_value("attention.head_count_kv", heads)) or heads
        key_dim = self.arch_value("attention.key_length")
        value_dim = self.arch_value("attention.value_length")
        k = int(key_dim) * kv_heads if key_dim else embedding * kv_heads // heads
        v = int(value_dim) * kv_heads if value_dim else embedding * kv_heads // heads
        return n_ctx * layers * (k + v) * 2

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return str(value) if value else None

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """(prefix, suffix, middle) ids declared in the metadata, or None."""
        for keys in (("fim_pre", "fim_suf", "fim_mid"), ("prefix", "suffix", "middle")):
            ids = [self.metadata.get(f"tokenizer.ggml.{k}_token_id") for k in keys]
            if all(isinstance(i, int) and i >= 0 for i in ids):
                return ids[0], ids[1], ids[2]
        return None


def _tensor_bytes(tensors: Any) -> TensorBytes:
    blocks: dict[int, int] = {}
    output = embeddings = 0
    has_head = False
    for tensor in tensors:
        name, size = tensor.name, int(tensor.n_bytes)
        if name.startswith("blk."):
            index = int(name.split(".")[1])
            blocks[index] = blocks.get(index, 0) + size
        elif name.startswith("token_embd"):
            embeddings += size
        else:  # output.weight, output_norm.weight and any other non-block tensor: the output layer
            output += size
            has_head = has_head or name == "output.weight"
    if not has_head:
        output += embeddings  # tied embeddings: llama.cpp duplicates them onto the output layer's device
    layers = tuple(blocks.get(i, 0) for i in range(max(blocks) + 1)) if blocks else ()
    return TensorBytes(layers, output, embeddings)


def _first(value: Any) -> int:
    """Head counts may be per-layer lists; the largest sizes the cache."""
    if isinstance(value, list | tuple):
        return int(max(value)) if value else 0
    return int(value)
