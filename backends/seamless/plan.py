"""A SeamlessM4T v2 model's load plan and memory estimate (no pydantic: the worker imports it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from backends import safetensors
from backends.plan import MIB, LoadPlan, MemoryEstimate

# ISO-639-1 codes clients send (OpenAI's `language`) -> the ISO-639-3 codes SeamlessM4T uses.
LANGUAGES = {"en": "eng", "fr": "fra", "de": "deu", "es": "spa", "it": "ita", "pt": "por", "nl": "nld",
             "ru": "rus", "uk": "ukr", "pl": "pol", "cs": "ces", "ro": "ron", "tr": "tur", "ar": "arb",
             "he": "heb", "hi": "hin", "bn": "ben", "ur": "urd", "ta": "tam", "te": "tel", "zh": "cmn",
             "ja": "jpn", "ko": "kor", "vi": "vie", "th": "tha", "id": "ind", "ms": "zlm", "sw": "swh",
             "fi": "fin", "sv": "swe", "da": "dan", "no": "nob", "el": "ell", "hu": "hun", "fa": "pes",
             "ca": "cat", "et": "est", "lt": "lit", "lv": "lvs", "sk": "slk", "sl": "slv", "bg": "bul"}


@dataclass(frozen=True, kw_only=True)
class SeamlessPlan(LoadPlan):
    adapter: ClassVar[str] = "backends.seamless.adapter:SeamlessAdapter"

    path: Path
    dtype: Literal["float16", "float32"]
    default_language: str  # ISO-639-3: what speech is taken to be in when the request does not say
    max_new_tokens: int
    window_seconds: float
    weight_files: tuple[Path, ...]
    hidden: int
    layers: int

    def estimate(self) -> MemoryEstimate:
        element = 2 if self.dtype == "float16" else 4
        frames = int(self.window_seconds * 100 / 2)  # 10 ms filterbank frames, stride 2
        # Speech-encoder states for one window and the decoders' KV caches for their longest output.
        activations = self.layers * (frames * (6 * self.hidden + frames) + 4 * self.max_new_tokens * self.hidden)
        return MemoryEstimate(weights_mb=safetensors.bytes_at(self.weight_files, element) / MIB,
                              activations_mb=activations * element / MIB, runtime_mb=self.runtime_mb)
