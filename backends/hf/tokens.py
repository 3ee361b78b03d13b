"""Token ids back to text and bytes, for any Hugging Face tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

# Fill-in-the-middle token triples (prefix, suffix, middle) of the common code-model families.
FIM_TOKENS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, DeepSeek-style
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"),  # DeepSeek-Coder
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),  # CodeLlama (sentencepiece spelling)
)


def fim_tokens(tokenizer) -> tuple[str, str, str] | None:
    vocab = tokenizer.get_vocab()
    return next((triple for triple in FIM_TOKENS if all(t in vocab for t in triple)), None)


def fim_in_files(path: Path) -> bool:
    """Whether the checkpoint's tokenizer files hold a FIM triple, read without loading a tokenizer
    (the server decides what /v1/models reports before any load)."""
    names: set[str] = set()
    try:
        data = json.loads((path / "tokenizer.json").read_text())
        names.update(t.get("content", "") for t in data.get("added_tokens", []))
        vocab = (data.get("model") or {}).get("vocab")
        names.update(vocab if isinstance(vocab, dict) else ())
    except (OSError, ValueError, AttributeError):
        pass
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
        names.update(t.get("content", "") for t in (config.get("added_tokens_decoder") or {}).values())
    except (OSError, ValueError, AttributeError):
        pass
    return any(all(t in names for t in triple) for triple in FIM_TOKENS)


def template_in_files(path: Path) -> str | None:
    """The checkpoint's default chat template, as transformers finds it: chat_template.jinja, else
    tokenizer_config.json's `chat_template` (a string, or named templates with a "default")."""
    try:
        return (path / "chat_template.jinja").read_text()
    except OSError:
        pass
    try:
        template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


class Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character or a wrong leading space.

    A fast tokenizer decodes through its Rust DecodeStream (a step costs ~1 µs, where decoding the
    window twice in Python costs ~10); the window is still tracked, for flush()."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self._backend = getattr(tokenizer, "_tokenizer", None)
        self._stream = _decode_stream() if self._backend is not None else None

    def push(self, token: int) -> str:
        self.ids.append(token)
        if self._stream is not None:
            try:
                piece = self._stream.step(self._backend, token)
            except Exception:  # an id the Rust side refuses: the Python path decides as before
                self._stream = None
            else:
                if not piece:
                    return ""
                self.prefix, self.read = self.read, len(self.ids)
                return piece
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


def _decode_stream():
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:  # tokenizers before 0.21
        return None
    return DecodeStream(skip_special_tokens=True)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer, token: int) -> bytes:
    """The exact bytes a token stands for (byte-level BPE, sentencepiece byte tokens, or plain text)."""
    piece = tokenizer.convert_ids_to_tokens(token)
    if piece is None:
        return b""
    if piece in tokenizer.all_special_tokens:
        return piece.encode()
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    if all(c in _BYTE_DECODER for c in piece):
        return bytes(_BYTE_DECODER[c] for c in piece)
    return piece.replace("▁", " ").encode()
