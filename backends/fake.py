"""A deterministic fake engine: text from a fixed vocabulary, configurable memory, timing and faults.

Declared in models.yaml like any model (backend: fake). Tests and the demo use it to exercise the
arbiter, the worker hop and the wire without real weights.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from typing import Any

from backends.base import Cancel, ChatParams, Chunks, CompletionParams, InvalidInput, StopMatcher

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "small", "models", "answer", "local", "questions", "about", "memory", "budgets", "and", "careful", "arbiters", "keep", "every", "card", "cool", "enough"]


class FakeAdapter:
    def __init__(self, spec: dict[str, Any]):
        self.options = spec.get("options", {})
        self.model_id = spec["id"]
        self._tokens_generated = 0
        self._lock = threading.Lock()
        self._ballast = b""
        if self.options.get("hang_load"):
            while True:
                time.sleep(3600)
        time.sleep(self.options.get("load_seconds", 0.0))
        if self.options.get("fail_load"):
            raise RuntimeError(self.options["fail_load"])
        marker = self.options.get("fail_load_while_exists")
        if marker and os.path.exists(marker):
            raise RuntimeError(f"weights unreadable ({os.path.basename(marker)} present)")
        if self.options.get("allocate"):
            # Touch every page so the worker's resident memory is really this large.
            self._ballast = bytes(bytearray(b"\x01") * (self.options["memory_mb"] * 1024 * 1024))

    def memory_mb(self) -> float:
        return float(self.options.get("memory_mb", 256))

    def stats(self) -> dict[str, Any]:
        return {"tokens_generated": self._tokens_generated}

    def close(self) -> None:
        self._ballast = b""

    def chat(self, params: ChatParams, cancel: Cancel) -> Chunks:
        prompt = "\n".join(_text_of(m.get("content")) for m in params.messages)
        prompt_tokens = len(prompt.split()) + 3 * len(params.messages)
        return (yield from self._generate(prompt, prompt_tokens, params.max_tokens, params.stop, cancel))

    def complete(self, params: CompletionParams, cancel: Cancel) -> Chunks:
        prompt_tokens = len(params.prompt.split())
        return (yield from self._generate(params.prompt, prompt_tokens, params.max_tokens, params.stop, cancel))

    def _generate(self, prompt: str, prompt_tokens: int, max_tokens: int | None, stop, cancel: Cancel) -> Chunks:
        context = int(self.options.get("context_length", 4096))
        if prompt_tokens >= context:
            raise InvalidInput(
                f"This model's maximum context length is {context} tokens; the prompt has {prompt_tokens}.",
                param="messages",
                code="context_length_exceeded",
            )
        budget = min(max_tokens or context - prompt_tokens, context - prompt_tokens)
        latency = float(self.options.get("token_latency_s", 0.0))
        crash_after = self.options.get("crash_after_tokens")
        start = zlib.crc32(prompt.encode())
        matcher = StopMatcher(stop)
        produced = 0
        finish = "length"
        while produced < budget:
            if cancel:
                finish = "cancelled"
                break
            if crash_after is not None and produced >= crash_after:
                os.abort()  # what a native engine failure looks like to the server
            while self.options.get("hang_generation"):
                time.sleep(3600)
            if latency:
                time.sleep(latency)
                if cancel:
                    finish = "cancelled"
                    break
            word = WORDS[(start + produced * 7) % len(WORDS)]
            produced += 1
            with self._lock:
                self._tokens_generated += 1
            text, hit = matcher.feed(" " + word if produced > 1 else word)
            if text:
                yield {"text": text}
            if hit:
                finish = "stop"
                break
        else:
            tail = matcher.flush()
            if tail:
                yield {"text": tail}
        return {
            "finish_reason": finish,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": produced},
        }


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""
