"""A deterministic fake engine: text from a fixed vocabulary, configurable memory, timing and faults.

Declared in models.yaml like any model (backend: fake). Tests and the demo use it to exercise the
arbiter, the worker hop and the wire without real weights.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from backends.contract import Cancel, ChatParams, Chunks, CompletionParams, TextResult
from backends.fake.plan import FakePlan
from backends.text import StopMatcher, check_context

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "small", "models", "answer",
         "local", "questions", "about", "memory", "budgets", "and", "careful", "arbiters", "keep", "every", "card",
         "cool", "enough"]


class FakeAdapter:
    def __init__(self, plan: FakePlan):
        self.plan = plan
        self.context = plan.context_length
        self._tokens_generated = 0
        self._lock = threading.Lock()
        self._ballast = b""
        if self.plan.hang_load:
            while True:
                time.sleep(3600)
        if self.plan.source == "ram":
            self._resume()
        else:
            time.sleep(self.plan.load_seconds)
            if self.plan.fail_load:
                raise RuntimeError(self.plan.fail_load)
            marker = self.plan.fail_load_while_exists
            if marker and os.path.exists(marker):  # the "weights" on disk are unreadable
                raise RuntimeError(f"weights unreadable ({os.path.basename(marker)} present)")
        if self.plan.allocate:
            # Touch every page so the worker's resident memory is really this large.
            self._ballast = bytes(bytearray(b"\x01") * (self.plan.memory_mb * 1024 * 1024))

    def _resume(self) -> None:
        """Load from the warm tier: the manifest park() wrote, never the disk."""
        manifest = json.loads((Path(self.plan.warm_path or "") / "manifest.json").read_text())
        if manifest["model_id"] != self.plan.model_id:
            raise RuntimeError(f"the warm copy holds {manifest['model_id']}, not {self.plan.model_id}")
        time.sleep(self.plan.resume_seconds)

    def memory_mb(self) -> float:
        return self.plan.estimate().model_mb

    def stats(self) -> dict[str, Any]:
        return {"tokens_generated": self._tokens_generated, "n_ctx": self.context, "source": self.plan.source}

    def park(self, dest: Path) -> int:
        """Write the warm copy: a manifest standing for weights of the simulated size."""
        time.sleep(self.plan.park_seconds)
        if self.plan.fail_park:
            raise RuntimeError(self.plan.fail_park)
        (dest / "manifest.json").write_text(json.dumps({"model_id": self.plan.model_id,
                                                         "memory_mb": self.plan.memory_mb}))
        return self.plan.memory_mb * 1024 * 1024

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
        check_context(prompt_tokens, self.context, "messages")
        room = self.context - prompt_tokens
        budget = min(max_tokens or room, room)
        crash_after = self.plan.crash_after_tokens
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
            while self.plan.hang_generation or produced == self.plan.hang_after_tokens:
                time.sleep(3600)  # an engine stuck in native code: the worker's heartbeat goes on
            if self.plan.token_latency_s:
                time.sleep(self.plan.token_latency_s)
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
        result: TextResult = {"finish_reason": finish,
                              "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": produced}}
        return result


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""
