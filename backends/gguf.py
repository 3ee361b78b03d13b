"""GGUF models through llama-cpp-python: chat, completions (with fill-in-the-middle) and embeddings.

We drive llama.cpp's decode and sampler chain ourselves rather than calling create_completion, so
that the Cancel flag is checked between tokens, several requests decode in one batch
(backends/gguf_scheduler.py owns the context on one thread), logprobs come from the raw logits,
and chat templates render in jinja2's sandbox (llama-cpp-python's own template path was
CVE-2024-34359). Embedding models use llama-cpp-python's embed() under a lock.
"""

from __future__ import annotations

import codecs
import ctypes
import datetime
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import (
    Cancel,
    ChatParams,
    Chunks,
    CompletionParams,
    EmbeddingParams,
    InvalidInput,
    SamplingParams,
    StopMatcher,
)
from backends.gguf_file import MIB, GgufFile
from backends.gguf_scheduler import Scheduler, Sequence

DEFAULT_CONTEXT = 4096
_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed
_PENALTY_WINDOW = 64


class GgufAdapter:
    def __init__(self, spec: dict[str, Any]):
        import llama_cpp

        self._lc = llama_cpp
        options = spec.get("options") or {}
        self.model_id = spec["id"]
        self.file = GgufFile.read(spec["path"])  # clear errors for empty/truncated files
        self.embedding = bool(options.get("embedding"))
        self.n_ctx = int(options.get("n_ctx") or min(self.file.context_length, DEFAULT_CONTEXT))
        gpu_layers = options.get("n_gpu_layers")
        if gpu_layers is None:
            gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        # llama.cpp uses n_threads_batch for any step of more than one token (prompts, batched
        # decodes); llama-cpp-python defaults it to every core, so it follows n_threads here.
        threads = options.get("n_threads")
        kwargs: dict[str, Any] = dict(n_ctx=self.n_ctx, n_gpu_layers=gpu_layers, verbose=False,
                                      embedding=self.embedding, n_threads=threads, n_threads_batch=threads)
        if self.embedding:
            # A pooled embedding needs the whole input in one micro-batch.
            kwargs.update(n_batch=self.n_ctx, n_ubatch=self.n_ctx)
            if f"{self.file.architecture}.pooling_type" not in self.file.metadata:
                kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        n_parallel = int(options.get("n_parallel") or 1)
        if not self.embedding:
            # The loader's own context is a stub: generation runs on a context made for batching.
            kwargs.update(n_ctx=32, n_batch=32, n_ubatch=32)
        try:
            self.llama = llama_cpp.Llama(str(self.file.path), **kwargs)
        except ValueError as exc:
            raise RuntimeError(f"llama.cpp could not load {Path(self.file.path).name}: {exc}") from None
        self._counters = {"tokens_generated": 0, "peak_sequences": 0}
        self.scheduler = None
        if not self.embedding:
            self.scheduler = self._batching_scheduler(n_parallel)
        self.vocab = self.llama._model.vocab
        self.n_vocab = self.llama.n_vocab()
        self._template_source = options.get("chat_template") or self.file.chat_template
        self._template = None
        self._lock = threading.Lock()
        self._prompt_tokens = 0
        self._requests = 0

    # ---- the Adapter protocol ------------------------------------------------------------------

    def memory_mb(self) -> float:
        weights = self._lc.llama_model_size(self.llama._model.model)
        kv = 0 if self.embedding else self.file.kv_cache_bytes(self.n_ctx)
        logits = self.n_vocab * 4 * min(self.n_ctx, 512)  # output buffer for a full micro-batch
        return (weights + kv + logits) / MIB + 16.0

    def stats(self) -> dict[str, Any]:
        return {**self._counters, "prompt_tokens": self._prompt_tokens,
                "requests": self._requests, "n_ctx": self.n_ctx}

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.ctx.close()
        self.llama.close()

    def _batching_scheduler(self, n_parallel: int) -> Scheduler:
        from llama_cpp import _internals

        params = type(self.llama.context_params).from_buffer_copy(self.llama.context_params)
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = min(self.n_ctx, 512)
        params.n_seq_max = n_parallel
        params.kv_unified = True  # one pool of n_ctx cells: the memory estimate holds for any n_parallel
        self.llama._ctx.close()
        try:
            self.ctx = _internals.LlamaContext(model=self.llama._model, params=params, verbose=False)
        except ValueError as exc:
            raise RuntimeError(f"llama.cpp could not create a {self.n_ctx}-token context: {exc}") from None
        return Scheduler(self._lc, self.ctx, self.n_ctx, n_parallel, params.n_batch, self.llama.n_vocab(),
                         self._counters)

    # ---- capabilities --------------------------------------------------------------------------

    def chat(self, params: ChatParams, cancel: Cancel) -> Chunks:
        self._text_model()
        prompt = self._render(params.messages, params.tools)
        add_bos = self._adds_bos() and not prompt.startswith(self._piece_text(self.llama.token_bos()))
        tokens = self.llama.tokenize(prompt.encode(), add_bos=add_bos, special=True)
        top = params.top_logprobs if params.logprobs else None
        return (yield from self._generate(tokens, params, cancel, top=top, param="messages"))

    def complete(self, params: CompletionParams, cancel: Cancel) -> Chunks:
        self._text_model()
        if params.suffix is not None:
            tokens = self._fim_tokens(params.prompt, params.suffix)
        else:
            tokens = self.llama.tokenize(params.prompt.encode(), add_bos=self._adds_bos(), special=True)
        echo = params.prompt if params.echo else None
        return (yield from self._generate(tokens, params, cancel, top=params.logprobs, param="prompt", echo=echo))

    def embed(self, params: EmbeddingParams, cancel: Cancel) -> Chunks:
        if not self.embedding:
            raise InvalidInput(f"model {self.model_id} is not declared as an embedding model "
                               "(options.embedding: true)", param="model", code="unsupported")
        yield from ()
        with self._lock:
            counts = []
            for i, text in enumerate(params.inputs):
                n = len(self.llama.tokenize(text.encode(), add_bos=self._adds_bos(), special=True))
                if n > self.n_ctx:
                    raise InvalidInput(f"This model's maximum context length is {self.n_ctx} tokens; "
                                       f"input {i} has {n}.", param="input", code="context_length_exceeded")
                counts.append(n)
            vectors = self.llama.embed(list(params.inputs), normalize=True, truncate=False) if params.inputs else []
            self._prompt_tokens += sum(counts)
            self._requests += 1
        return {"embeddings": vectors, "usage": {"prompt_tokens": sum(counts)}}

    # ---- prompts -------------------------------------------------------------------------------

    def _text_model(self) -> None:
        if self.embedding:
            raise InvalidInput(f"model {self.model_id} is an embedding model", param="model", code="unsupported")

    def _adds_bos(self) -> bool:
        return bool(self._lc.llama_vocab_get_add_bos(self.vocab))

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        if self._template is None:
            if not self._template_source:
                raise InvalidInput(f"model {self.model_id} has no chat template in its GGUF metadata; set "
                                   "options.chat_template or use /v1/completions", param="messages")
            self._template = _compile_template(self._template_source)
        messages = [_plain_message(m) for m in messages]
        if tools and "tools" not in self._template_source:
            # Templates that know nothing of tools still have to show them to the model.
            import json

            note = {"role": "system", "content": "You may call these tools: " + json.dumps(tools)}
            messages = [note, *messages]
        try:
            return self._template.render(
                messages=messages, tools=tools, add_generation_prompt=True,
                bos_token=self._piece_text(self.llama.token_bos()),
                eos_token=self._piece_text(self.llama.token_eos()),
            )
        except InvalidInput:
            raise
        except Exception as exc:  # the template refused these messages (e.g. roles out of order)
            raise InvalidInput(f"the chat template could not render these messages: {exc}",
                               param="messages") from None

    def _fim_tokens(self, prefix: str, suffix: str) -> list[int]:
        # Only the metadata counts: llama.cpp also guesses FIM tokens from token names, which a
        # model not trained for infill may merely contain.
        fim = self.file.fim_tokens()
        if fim is None:
            raise InvalidInput(f"model {self.model_id} has no fill-in-the-middle tokens in its GGUF metadata; "
                               "`suffix` is not supported", param="suffix", code="unsupported_suffix")
        pre, suf, mid = fim
        head = [self.llama.token_bos()] if self._adds_bos() else []
        prefix_tokens = self.llama.tokenize(prefix.encode(), add_bos=False, special=True)
        suffix_tokens = self.llama.tokenize(suffix.encode(), add_bos=False, special=True)
        return [*head, pre, *prefix_tokens, suf, *suffix_tokens, mid]

    def _piece(self, token: int, special: bool = False) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self.vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    def _piece_text(self, token: int) -> str:
        return self._piece(token, special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    # ---- decoding ------------------------------------------------------------------------------

    def _generate(self, tokens: list[int], params: SamplingParams, cancel: Cancel, *, top: int | None,
                  param: str, echo: str | None = None) -> Chunks:
        if len(tokens) >= self.n_ctx:
            raise InvalidInput(f"This model's maximum context length is {self.n_ctx} tokens; the prompt has "
                               f"{len(tokens)}.", param=param, code="context_length_exceeded")
        bias = _logit_bias(params.logit_bias, self.n_vocab)
        grammar = self._grammar(params.response_format)
        budget = self.n_ctx - len(tokens)
        if params.max_tokens is not None:
            budget = min(budget, params.max_tokens)
        self._requests += 1
        self._prompt_tokens += len(tokens)
        stream = TokenStream(self, tokens, params.stop, top, echo)
        sampler = self._sampler(params, bias, grammar)
        seq = Sequence(tokens, sampler, budget, stream, cancel, prompt_logits=echo is not None and top is not None)
        ended = False
        try:
            if echo is not None and top is None:
                yield {"text": echo}
            self.scheduler.submit(seq)
            while True:
                kind, payload = seq.events.get()
                if kind == "chunk":
                    yield payload
                elif kind == "end":
                    ended = True
                    return payload
                else:
                    ended = True
                    raise payload
        finally:
            if not ended:  # abandoned: stop the sequence before its sampler goes
                cancel.set()
                try:
                    while seq.events.get(timeout=5)[0] == "chunk":
                        pass
                except queue.Empty:
                    return  # the scheduler is gone (shutdown); leave the sampler to the process exit
            sampler.close()

    def _strips_space(self) -> bool:
        # SPM vocabularies add a leading space to the prompt; the echoed text has none.
        return self.file.metadata.get("tokenizer.ggml.model") == "llama"

    def _logprob_entry(self, logits: np.ndarray, token: int, piece: bytes, offset: int, top: int) -> dict[str, Any]:
        row = logits.astype(np.float64)
        peak = row.max()
        logz = peak + np.log(np.exp(row - peak).sum())
        entry: dict[str, Any] = {"token": piece.decode("utf-8", errors="replace"),
                                 "logprob": float(row[token] - logz), "bytes": list(piece),
                                 "text_offset": offset, "top_logprobs": []}
        if top:
            best = np.argpartition(-row, top)[:top] if top < len(row) else np.arange(len(row))
            best = best[np.argsort(-row[best])]
            for alt in best:
                alt_piece = self._piece(int(alt))
                entry["top_logprobs"].append({"token": alt_piece.decode("utf-8", errors="replace"),
                                              "logprob": float(row[alt] - logz), "bytes": list(alt_piece)})
        return entry

    def _sampler(self, params: SamplingParams, bias: dict[int, float], grammar):
        from llama_cpp import _internals

        sampler = _internals.LlamaSampler()
        if bias:
            sampler.add_logit_bias(self.n_vocab, bias)
        if params.presence_penalty or params.frequency_penalty:
            sampler.add_penalties(self.n_vocab, _PENALTY_WINDOW, 1.0, params.frequency_penalty,
                                  params.presence_penalty)
        if grammar is not None:
            sampler.add_grammar(self.llama._model, grammar)
        if params.temperature == 0:
            sampler.add_greedy()
        else:
            if params.top_p < 1.0:
                sampler.add_top_p(params.top_p, 1)
            sampler.add_temp(params.temperature)
            seed = _RANDOM_SEED if params.seed is None else params.seed % _RANDOM_SEED
            sampler.add_dist(seed)
        return sampler

    def _grammar(self, response_format: dict[str, Any] | None):
        if not response_format:
            return None
        from llama_cpp import LlamaGrammar

        from backends.json_grammar import json_schema_to_gbnf

        kind = response_format.get("type")
        if kind == "json_object":
            schema: dict[str, Any] = {"type": "object"}
        elif kind == "json_schema":
            schema = response_format.get("schema") or {"type": "object"}
        else:
            return None
        try:
            gbnf = json_schema_to_gbnf(schema)
            # llama-cpp-python's converter lets raw control characters into strings, which strict
            # JSON parsers (Python's json, JavaScript) reject; llama.cpp's own converter excludes them.
            gbnf = gbnf.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')
            return LlamaGrammar.from_string(gbnf, verbose=False)
        except Exception as exc:
            raise InvalidInput(f"the JSON schema cannot be turned into a grammar: {exc}",
                               param="response_format") from None


class TokenStream:
    """Turns one sequence's sampled tokens into chunks: UTF-8 across tokens, stop strings held
    back until they can be ruled out, logprobs attached to the chunk their token's text is in."""

    def __init__(self, adapter: GgufAdapter, prompt: list[int], stop: list[str], top: int | None, echo: str | None):
        self.adapter = adapter
        self.prompt = prompt
        self.top = top
        self.echo = echo
        self.wants_logits = top is not None
        self.offset = len(echo) if echo is not None else 0
        self.matcher = StopMatcher(stop)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending: list[dict[str, Any]] = []
        self.decoded = 0  # characters decoded so far
        self.emitted = 0  # characters sent so far
        self.echo_entries: list[dict[str, Any]] = []
        self.stopped = False  # a stop string was hit: nothing after it belongs to the output

    def prompt_logits(self, row: np.ndarray) -> None:
        """The logits after prompt position p, which scored the prompt's token p + 1."""
        position = len(self.echo_entries)
        if position + 1 < len(self.prompt):
            token = self.prompt[position + 1]
            self.echo_entries.append(self.adapter._logprob_entry(row, token, self.adapter._piece(token), 0,
                                                                 self.top or 0))

    def prompt_done(self) -> dict[str, Any]:
        """The echoed prompt with its logprobs (BOS, not being text, is left out)."""
        adapter, entries, offset, first_text = self.adapter, [], 0, True
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i, token in enumerate(self.prompt):
            piece = adapter._piece(token)
            if i == 0 and token == adapter.llama.token_bos():
                continue
            if i == 0:  # nothing scored the first token
                entry = {"token": piece.decode("utf-8", errors="replace"), "logprob": None, "bytes": list(piece),
                         "top_logprobs": []}
            else:
                entry = self.echo_entries[i - 1]
            text = decoder.decode(piece)
            if first_text and text:
                first_text = False
                if text.startswith(" ") and adapter._strips_space() and not (self.echo or "").startswith(" "):
                    text = text[1:]  # SPM's added leading space is not in the prompt the client sent
            entries.append({**entry, "text_offset": offset})
            offset += len(text)
        self.echo_entries = []
        return {"text": self.echo or "", "logprobs": entries}

    def emit(self, token: int, logits: np.ndarray | None) -> tuple[str | None, dict[str, Any] | None, bool]:
        """(finish reason or None, chunk or None, whether the token counts as generated)."""
        adapter = self.adapter
        if adapter._lc.llama_vocab_is_eog(adapter.vocab, token):
            return "stop", None, False
        piece = adapter._piece(token)
        text = self.decoder.decode(piece)
        if logits is not None:
            self.pending.append(adapter._logprob_entry(logits, token, piece, self.offset + self.decoded, self.top or 0))
        self.decoded += len(text)
        out, hit = self.matcher.feed(text)
        self.emitted += len(out)
        self.stopped = hit
        return ("stop" if hit else None), self._chunk(out, hit), True

    def finish(self, reason: str, produced: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        tail = None
        if not self.stopped:
            # Ended by length or end-of-generation: text held back for a stop string that never came,
            # and every counted token's logprobs (one with no text of its own included), are output.
            text = self.matcher.flush() + self.decoder.decode(b"", final=True)
            self.emitted += len(text)
            tail = self._chunk(text, True, everything=True)
        final = {"finish_reason": reason, "usage": {"prompt_tokens": len(self.prompt), "completion_tokens": produced}}
        return tail, final

    def _chunk(self, text: str, final: bool, everything: bool = False) -> dict[str, Any] | None:
        """Text safe to send, with the logprobs of the tokens that begin inside it (all of them if
        `everything`)."""
        sent_until = self.offset + self.emitted
        ready = list(self.pending) if everything else [e for e in self.pending if e["text_offset"] < sent_until]
        self.pending = [] if final else [e for e in self.pending if e["text_offset"] >= sent_until]
        if not text and not ready:
            return None
        chunk: dict[str, Any] = {"text": text}
        if self.wants_logits:
            chunk["logprobs"] = ready
        return chunk


def _logit_bias(bias: dict[str, float], n_vocab: int) -> dict[int, float]:
    out = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidInput(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
        if not 0 <= token < n_vocab:
            raise InvalidInput(f"logit_bias token {token} is outside the vocabulary (0..{n_vocab - 1})",
                               param="logit_bias")
        # OpenAI's -100/100 mean ban/force; llama.cpp takes additive logits, so make them decisive.
        out[token] = float("-inf") if value <= -100 else (1e4 if value >= 100 else float(value))
    return out


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """Content parts flattened to text (no image input for GGUF text models)."""
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise InvalidInput("this model accepts only text content parts", param="messages")
        message = {**message, "content": "".join(parts)}
    elif content is None:
        message = {**message, "content": ""}
    return message


def _compile_template(source: str):
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise InvalidInput(f"the chat template refused the messages: {message}", param="messages")

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise InvalidInput(f"the model's chat template does not compile: {exc}", param="model") from None
