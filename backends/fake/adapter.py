"""A deterministic fake engine: text from a fixed vocabulary, configurable memory, timing and faults.

Declared in models.yaml like any model (backend: fake). Tests and the demo use it to exercise the
arbiter, the worker hop and the wire without real weights. It honours what clients ask of a chat
model, deterministically, so a newcomer's first requests behave: a JSON schema (response_format,
and the tool-call schema the server asks for) gets a valid instance, logprobs are reported, stop
strings, echo and suffix work, and an answer with no max_tokens ends on its own after a short
sentence. Its vocabulary is WORDS (one token per word; anything else is the unknown token).
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends import text
from backends.contract import (
    Cancel,
    ChatParams,
    Chunks,
    CompletionParams,
    DetokenizeParams,
    SamplingParams,
    TextChunk,
    TextResult,
    TokenizeParams,
    TokenLogprob,
)
from backends.fake.plan import FakePlan
from backends.text import StopMatcher, check_context

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "small", "models", "answer",
         "local", "questions", "about", "memory", "budgets", "and", "careful", "arbiters", "keep", "every", "card",
         "cool", "enough"]
UNKNOWN = len(WORDS)  # the token id of any word not in WORDS
NATURAL_LENGTH = 12  # words in an answer that was given no max_tokens


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
        after_tool = bool(params.messages) and params.messages[-1].get("role") == "tool"
        top = params.top_logprobs if params.logprobs else None
        return (yield from self._generate(prompt, prompt_tokens, params, cancel, top, after_tool=after_tool))

    def complete(self, params: CompletionParams, cancel: Cancel) -> Chunks:
        prompt = params.prompt
        if params.prompt_tokens is not None:
            prompt = _detokenize(text.check_token_ids(params.prompt_tokens, len(WORDS) + 1, "prompt"))
        prompt_tokens = len(prompt.split()) + (len(params.suffix.split()) if params.suffix else 0)
        if params.echo:
            yield _chunk(prompt, _echo_logprobs(prompt, params.logprobs) if params.logprobs is not None else None)
        return (yield from self._generate(prompt + (params.suffix or ""), prompt_tokens, params, cancel,
                                          params.logprobs, offset=len(prompt) if params.echo else 0))

    def tokenize(self, params: TokenizeParams, cancel: Cancel) -> Chunks:
        """Words of its vocabulary; through the "chat template", each message framed by 3 tokens."""
        yield from ()
        if params.messages is None:
            words = (params.text or "").split()
        else:
            words = [w for m in params.messages for w in ["<|role|>"] * 3 + _text_of(m.get("content")).split()]
        return {"tokens": [WORDS.index(w) if w in WORDS else UNKNOWN for w in words], "pieces": words}

    def detokenize(self, params: DetokenizeParams, cancel: Cancel) -> Chunks:
        yield from ()
        return {"text": _detokenize(text.check_token_ids(params.tokens, len(WORDS) + 1, "tokens"))}

    def _generate(self, prompt: str, prompt_tokens: int, params: SamplingParams, cancel: Cancel, top: int | None,
                  after_tool: bool = False, offset: int = 0) -> Chunks:
        check_context(prompt_tokens, self.context, "messages")
        room = self.context - prompt_tokens
        budget = min(params.max_tokens or room, room)
        seed = zlib.crc32(prompt.encode())
        schema = text.json_schema(params.response_format)
        natural = params.max_tokens is None and schema is None  # a plain answer ends on its own
        matcher = StopMatcher(params.stop)
        produced, finish, hit, emitted = 0, "stop", False, offset
        for piece in _json_pieces(schema, seed, after_tool) if schema is not None else _words(seed):
            if produced >= budget:
                finish = "length"
                break
            if natural and produced >= NATURAL_LENGTH:
                break
            if cancel:
                finish = "cancelled"
                break
            if self.plan.crash_after_tokens is not None and produced >= self.plan.crash_after_tokens:
                os.abort()  # what a native engine failure looks like to the server
            if self._wait(cancel, produced):
                finish = "cancelled"
                break
            produced += 1
            with self._lock:
                self._tokens_generated += 1
            safe, hit = matcher.feed(piece)
            if safe or (hit and top is not None):
                yield _chunk(safe, [_logprob(piece, emitted, top)] if top is not None else None)
                emitted += len(safe)
            if hit:
                break
        if finish != "cancelled" and not hit and (tail := matcher.flush()):
            yield _chunk(tail, [] if top is not None else None)  # held back for a stop string that never came
        result: TextResult = {"finish_reason": finish,  # type: ignore[typeddict-item]
                              "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": produced}}
        return result

    def _wait(self, cancel: Cancel, produced: int) -> bool:
        """The simulated time a token takes (or forever); whether the client left meanwhile."""
        while self.plan.hang_generation or produced == self.plan.hang_after_tokens:
            time.sleep(3600)  # an engine stuck in native code: the worker's heartbeat goes on
        if self.plan.token_latency_s:
            time.sleep(self.plan.token_latency_s)
        return bool(cancel)


def _words(seed: int) -> Iterator[str]:
    produced = 0
    while True:
        word = WORDS[(seed + produced * 7) % len(WORDS)]
        yield word if produced == 0 else " " + word
        produced += 1


def _json_pieces(schema: dict[str, Any], seed: int, after_tool: bool) -> Iterator[str]:
    """A JSON instance of the schema, a few characters per token."""
    document = json.dumps(_instance(schema, seed, after_tool))
    for start in range(0, len(document), 4):
        yield document[start:start + 4]


def _instance(schema: dict[str, Any], seed: int, after_tool: bool) -> Any:
    """A deterministic value valid against the schema subset chat clients use (and the tool-call
    schema the server sends: a call, or after a tool's result, a message)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = schema[key]
            content = [o for o in options if "content" in (o.get("properties") or {})]
            chosen = content[0] if after_tool and content else options[0]
            return _instance(chosen, seed, after_tool)
    kind = schema.get("type", "object")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    word = WORDS[seed % len(WORDS)]
    if kind == "object":
        properties = schema.get("properties") or {}
        names = list(schema.get("required") or properties)
        return {name: _instance(properties.get(name, {"type": "string"}), seed + i, after_tool)
                for i, name in enumerate(names)}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [_instance(schema.get("items") or {"type": "string"}, seed + i, after_tool) for i in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 101) - 1)
        value = low + seed % (int(high) - int(low) + 1) if high >= low else low
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return seed % 2 == 0
    if kind == "null":
        return None
    low, high = int(schema.get("minLength", 0)), int(schema.get("maxLength", 40))
    return (word * (low // len(word) + 1))[:max(low, min(len(word), high))]


def _logprob(piece: str, offset: int, top: int | None) -> TokenLogprob:
    """A made-up but self-consistent distribution: the chosen piece most likely, then other words."""
    base = WORDS.index(piece.strip()) if piece.strip() in WORDS else 0
    spacing = " " if piece.startswith(" ") else ""
    alternatives = [piece] + [spacing + WORDS[(base + k) % len(WORDS)] for k in range(1, top or 0)]
    return {"token": piece, "logprob": -0.05, "bytes": list(piece.encode()), "text_offset": offset,
            "top_logprobs": [{"token": alt, "logprob": -0.05 - k, "bytes": list(alt.encode())}
                             for k, alt in enumerate(alternatives[: top or 0])]}


def _echo_logprobs(prompt: str, top: int) -> list[TokenLogprob]:
    entries, offset = [], 0
    for i, word in enumerate(prompt.split(" ")):
        piece = word if i == 0 else " " + word
        entry = _logprob(piece, offset, top)
        entries.append({**entry, "logprob": None} if i == 0 else entry)  # nothing predicts the first token
        offset += len(piece)
    return entries


def _chunk(piece: str, entries: list[TokenLogprob] | None) -> TextChunk:
    chunk: TextChunk = {"text": piece}
    if entries is not None:
        chunk["logprobs"] = entries
    return chunk


def _detokenize(ids: list[int]) -> str:
    return " ".join(WORDS[i] if i < len(WORDS) else "<unk>" for i in ids)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""
