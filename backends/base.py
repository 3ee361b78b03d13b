"""Adapter protocols by capability, and the plain data that crosses into a worker.

An adapter is synchronous and runs inside its own worker process. Each capability is a
generator method: it yields chunks (dicts) as they are produced and returns a final dict
(finish reason, usage). Cancellation arrives as a `Cancel` flag the engine checks per token
or per step. Adapters know nothing of HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Chunks = Generator[dict[str, Any], None, dict[str, Any]]


class Cancel:
    """Set by the worker when the client went away; engines poll it between tokens/steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __bool__(self) -> bool:  # `if cancel:` reads naturally in engine loops
        return self._event.is_set()


class InvalidInput(Exception):
    """The request cannot be served by this model as asked (maps to HTTP 400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class SamplingParams:
    """Shared by chat and completions. The route fills these from the OpenAI request."""

    max_tokens: int | None = None  # None: up to the end of the context
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None  # same seed, same prompt, same params -> same output
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] = field(default_factory=dict)  # token id (as str) -> bias
    # Constrained output, normalised by the route: None, {"type": "json_object"} or
    # {"type": "json_schema", "schema": {...}}. Tool calls reach engines as a json_schema.
    response_format: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatParams(SamplingParams):
    messages: list[dict[str, Any]] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20 alternatives per token when logprobs is on
    tools: list[dict[str, Any]] | None = None  # for chat templates that render tools


@dataclass
class CompletionParams(SamplingParams):
    prompt: str = ""
    suffix: str | None = None  # fill-in-the-middle; InvalidInput if the model has no FIM tokens
    echo: bool = False  # yield the prompt first (with its logprobs when asked)
    logprobs: int | None = None  # legacy: number of top alternatives per token (0..5)


@dataclass
class EmbeddingParams:
    inputs: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageParams:
    """One text-to-image call; the route has already checked every bound against the model's spec."""

    prompt: str = ""
    negative_prompt: str | None = None
    n: int = 1
    width: int = 512
    height: int = 512
    steps: int | None = None  # None: the model's default_steps
    guidance_scale: float | None = None  # None: the model's default_guidance
    seed: int | None = None  # image i uses seed + i, so each is reproducible on its own
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TranscriptionParams:
    """One speech-to-text call on audio the server decoded to 16 kHz mono float32.

    The samples sit in a raw little-endian float32 file the server wrote in its private temp dir
    (JSON lines would carry 30 minutes of audio as ~150 MB of base64)."""

    audio_path: str = ""
    task: str = "transcribe"  # or "translate" (to English)
    language: str | None = None  # None: detect
    prompt: str | None = None  # Whisper's initial_prompt
    temperature: float | None = None  # None or 0: the usual fallback ladder from 0
    word_timestamps: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# The chunk and result shapes every text adapter produces (JSON-serialisable dicts):
#   chat/complete chunk:  {"text": str, "logprobs": [TokenLogprob, ...]}  ("logprobs" only when asked)
#       TokenLogprob:     {"token": str, "logprob": float, "bytes": [int], "text_offset": int,
#                          "top_logprobs": [{"token": str, "logprob": float, "bytes": [int]}]}
#   chat/complete final:  {"finish_reason": "stop" | "length" | "cancelled",
#                          "usage": {"prompt_tokens": int, "completion_tokens": int}}
#   embed:                yields nothing; final {"embeddings": [[float]], "usage": {"prompt_tokens": int}}
#   generate_image:       yields {"step": int, "steps": int} per denoising step; final
#                         {"images": [base64 PNG], "steps": int, "seed": int | None, "nsfw": [bool] | None,
#                          "finish_reason": "stop" | "cancelled"}
#   transcribe:           yields nothing; final {"text", "language", "language_probability", "duration",
#                          "segments": [{id, seek, start, end, text, tokens, temperature, avg_logprob,
#                          compression_ratio, no_speech_prob, words?}], "words": [{word, start, end}] | None}
# A prompt longer than the context raises InvalidInput(code="context_length_exceeded") before
# generating anything. stats() includes {"tokens_generated": int} (tests assert on it).


class Adapter(Protocol):
    """What every engine adapter offers, whatever it serves."""

    def memory_mb(self) -> float:
        """The adapter's own account of its footprint (weights, caches, runtime)."""

    def stats(self) -> dict[str, Any]:
        """Counters for observability and tests (e.g. tokens generated)."""

    def close(self) -> None: ...


@runtime_checkable
class ChatModel(Protocol):
    def chat(self, params: ChatParams, cancel: Cancel) -> Chunks: ...


@runtime_checkable
class CompletionModel(Protocol):
    def complete(self, params: CompletionParams, cancel: Cancel) -> Chunks: ...


@runtime_checkable
class EmbeddingModel(Protocol):
    def embed(self, params: EmbeddingParams, cancel: Cancel) -> Chunks: ...


@runtime_checkable
class ImageModel(Protocol):
    def generate_image(self, params: ImageParams, cancel: Cancel) -> Chunks: ...


@runtime_checkable
class TranscriptionModel(Protocol):
    def transcribe(self, params: TranscriptionParams, cancel: Cancel) -> Chunks: ...


class StopMatcher:
    """Finds stop strings in streamed text, holding back a tail that might begin one.

    feed() returns the text that is safe to emit and whether a stop string was hit.
    """

    def __init__(self, stops: Sequence[str]):
        self._stops = [s for s in stops if s]
        self._held = ""
        self._keep = max((len(s) for s in self._stops), default=1) - 1

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        cut = len(buffer) - self._keep if self._keep else len(buffer)
        # Hold back only a tail that is a prefix of some stop string.
        while cut < len(buffer) and not any(s.startswith(buffer[cut:]) for s in self._stops):
            cut += 1
        self._held = buffer[cut:]
        return buffer[:cut], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
