"""Continuous batching for a transformers causal LM: one thread decodes the next token of every
running request in one forward, each request a row of one left-padded DynamicCache.

A request joins between steps: its prompt is read in a forward of its own, then its KV is left-padded
to the batch's length and appended as a row (the attention mask hides the padding; positions are
each row's own). A request that ends or is cancelled leaves, and padding every row has in front is
cut. Like llama.cpp's pool (gguf/scheduler.py), the rows never hold more than the one context the
memory estimate counts: a request joins when (rows + 1) x the longest reservation (prompt + max
tokens) fits in it, and waits for others to finish otherwise. A row whose reader is behind (the
server's backpressure) is set aside with its KV and joins again when its reader catches up.

One forward runs one set of weights: rows share it only when they decode with the same LoRA adapter
(or none); a request for another adapter waits, first come first served, until the running rows have
finished, and the adapter is switched under the model's lock before every forward.

Decoders other than the dynamic one (static, cuda-graphs: one StaticCache of the whole context) and
caches with other layer kinds (sliding windows) and vision models (their prompt step reads pixel
inputs through the adapter's decoder) run one request at a time through the same loop.

What a row does with its logits (bias, penalties, grammar, sampling with its own generator,
logprobs, detokenizing, stop strings) is its own (Row.advance), the same alone or in a batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from collections import deque
from typing import Any

from backends import text
from backends.contract import Cancel, TextChunk, TokenLogprob
from backends.hf.tokens import Detokenizer

_IDLE_WAIT_S = 0.05  # how often an idle scheduler looks for cancelled waiters and resumed readers
_MAX_UNREAD = 32  # a row whose reader (without an Outlet) has this many chunks unread is set aside


class Row:
    """One request's decoding state. Its caller reads `events`: ("chunk", dict) when the worker gave
    no Outlet, then ("end", result) or ("error", exception)."""

    def __init__(self, adapter, ids: list[int], params, cancel: Cancel, top: int | None, offset: int):
        torch = adapter._torch
        self.adapter = adapter
        self.ids = ids
        self.params = params
        self.cancel = cancel
        self.outlet = getattr(cancel, "outlet", None)
        self.events: queue.Queue = queue.Queue()
        self.top = top
        self.lora = params.adapter  # the LoRA adapter it decodes with (None: the base)
        self.bias = adapter._bias(params.logit_bias)
        self.constraint = adapter.guidance.constraint(params, adapter.template.source)
        self.budget = adapter.context - len(ids)
        if params.max_tokens is not None:
            self.budget = min(self.budget, params.max_tokens)
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.generator = torch.Generator(device=adapter.model.device).manual_seed(seed % (2**63))
        self.penalised = bool(params.presence_penalty or params.frequency_penalty)
        self.counts = torch.zeros(adapter.vocab_rows(), dtype=torch.float32,
                                  device=adapter.model.device) if self.penalised else None
        self.stops = text.StopMatcher(params.stop)
        self.detok = Detokenizer(adapter.tokenizer)
        self.pending: list[TokenLogprob] = []
        self.offset = offset
        self.produced = 0
        self.finish = "length"
        self.hit = False
        self.next_token = -1  # fed in the next step
        self.length = 0  # tokens in its KV
        self.kv: list[tuple[Any, Any]] | None = None  # its own KV while set aside (keys, values per layer)

    @property
    def reserve(self) -> int:
        return len(self.ids) + self.budget

    @property
    def held_back(self) -> bool:
        if self.outlet is not None:
            return self.outlet.paused
        return self.events.qsize() >= _MAX_UNREAD

    def advance(self, logits) -> bool:
        """Sample the next token from `logits` (1-D, this row's, ours to modify) and emit what it
        makes; True when the row has ended."""
        adapter, params = self.adapter, self.params
        raw = logits.clone() if self.top is not None else logits  # logprobs are the model's, before any change
        if logits.shape[-1] > adapter.vocab:
            logits[adapter.vocab:] = -math.inf  # padded rows of the embedding are not tokens
        if self.bias is not None:
            logits += self.bias
        if self.penalised:
            logits -= params.presence_penalty * (self.counts > 0) + params.frequency_penalty * self.counts
        if self.constraint is not None:
            adapter.guidance.mask(self.constraint, logits)
        token = adapter._sample(logits, params, self.generator)
        self.produced += 1
        adapter._tokens_generated += 1
        if self.penalised:
            self.counts[token] += 1
        if self.constraint is not None:
            self.constraint.accept(token)
        if token in adapter.eos_ids:
            self.finish = "stop"
            return True
        if self.top is not None:
            self.pending.append(adapter._token_logprob(raw, token, self.top, self.offset))
        piece = self.detok.push(token)
        self.offset += len(piece)
        safe, self.hit = self.stops.feed(piece)
        if safe or (self.hit and self.pending):
            self._emit(safe)
        if self.hit or (self.constraint is not None and self.constraint.finished):
            self.finish = "stop"
            return True
        if self.produced >= self.budget:
            return True
        self.next_token = token
        return False

    def end(self, finish: str | None = None) -> None:
        """Emit what is held back and the result."""
        if finish is not None:
            self.finish = finish
        if not self.hit:
            # Ended by length, end-of-sequence or the grammar: text held back for a stop string that
            # never came (and a last partial character) is output too.
            tail = self.stops.flush() + (self.detok.flush() if self.finish != "cancelled" else "")
            if tail or self.pending:
                self._emit(tail)
        elif self.pending:
            self._emit("")
        result = {"finish_reason": self.finish,
                  "usage": {"prompt_tokens": len(self.ids), "completion_tokens": self.produced}}
        if self.outlet is not None:
            self.outlet.finish(result)
        self.events.put(("end", result))

    def fail(self, exc: BaseException) -> None:
        self.events.put(("error", exc))

    def _emit(self, piece: str) -> None:
        chunk: TextChunk = {"text": piece}
        if self.top is not None:
            chunk["logprobs"] = self.pending
            self.pending = []
        if self.outlet is not None:
            self.outlet.send(chunk)
        else:
            self.events.put(("chunk", chunk))


class Scheduler:
    """The thread that owns the model's decoding; `submit` a Row, read its events."""

    def __init__(self, adapter, n_parallel: int, batched: bool):
        self._adapter = adapter
        self._torch = adapter._torch
        self._n_parallel = n_parallel if batched else 1
        self._batched = batched
        self._waiting: deque[Row] = deque()
        self._rows: list[Row] = []  # in the cache's row order
        self._aside: list[Row] = []  # set aside by backpressure, their KV kept in the row
        self._cache = None  # the batch's DynamicCache (batched mode)
        self._mask = None  # [rows, cache length]: 1 for a real token, 0 for padding
        self._cv = threading.Condition()
        self._stopping = False
        self.peak_rows = 0
        self._thread = threading.Thread(target=self._run, name="hf-scheduler", daemon=True)
        self._thread.start()

    def submit(self, row: Row) -> None:
        with self._cv:
            self._waiting.append(row)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(10)

    # ---- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._rows and not self._waiting and not self._aside:
                    self._cv.wait(_IDLE_WAIT_S)
                if self._stopping:
                    break
            try:
                with self._torch.inference_mode():  # the rows' own tensor work too: logits are inference tensors
                    self._drop_cancelled()
                    self._admit()
                    stepped = self._step() if self._rows else False
            except Exception as exc:  # the engine failed: fail what was running, keep serving
                for row in [*self._rows, *self._aside]:
                    row.fail(exc)
                self._rows, self._aside, self._cache, self._mask = [], [], None, None
                continue
            if not stepped:
                with self._cv:
                    self._cv.wait(_IDLE_WAIT_S)  # waiters that do not fit yet, readers that are behind
        for row in [*self._rows, *self._aside, *self._waiting]:
            row.fail(RuntimeError("the model is shutting down"))

    def _drop_cancelled(self) -> None:
        with self._cv:
            for row in [r for r in self._waiting if r.cancel]:
                self._waiting.remove(row)
                row.end("cancelled")
        for row in [r for r in self._aside if r.cancel]:
            self._aside.remove(row)
            row.kv = None
            row.end("cancelled")

    def _fits(self, row: Row) -> bool:
        """Room for one more row: the padded rows stay within the one context the estimate counts."""
        present = [*self._rows, *self._aside]
        if not present:
            return True
        if len(present) >= self._n_parallel:
            return False
        if present[0].lora != row.lora:  # one forward runs one set of LoRA weights: it waits for the batch to drain
            return False
        longest = max(r.reserve for r in [*present, row])
        return (len(present) + 1) * longest <= self._adapter.context

    def _admit(self) -> None:
        # Rows set aside whose readers caught up come back first.
        for row in [r for r in self._aside if not r.held_back]:
            self._aside.remove(row)
            self._join(row, row.kv, row.length)
            row.kv = None
        while True:
            with self._cv:
                if not self._waiting or not self._fits(self._waiting[0]):
                    return
                row = self._waiting.popleft()
            self._start(row)

    def _start(self, row: Row) -> None:
        """Read the prompt in a forward of its own and sample the first token."""
        adapter, torch = self._adapter, self._torch
        input_ids = torch.tensor([row.ids], device=adapter.model.device)
        try:
            with self._timed(row.lora):
                if self._batched:
                    out = adapter.text_model(input_ids=input_ids, use_cache=True, **{adapter._cache_arg: None},
                                        **adapter._keep)
                    logits = out.logits[0, -1].float()
                    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                    kv = [(layer.keys, layer.values) for layer in cache.layers]
                else:
                    adapter.decoder.begin()
                    logits = adapter.decoder.step(input_ids)
                    kv = None
            row.length = len(row.ids)
            ended = row.advance(logits)
        except Exception as exc:  # this request's prompt or first token failed; the others go on
            row.fail(exc)
            return
        if ended:
            row.end()
            return
        self._join(row, kv, row.length)

    def _join(self, row: Row, kv: list[tuple[Any, Any]] | None, length: int) -> None:
        torch = self._torch
        self._rows.append(row)
        self.peak_rows = max(self.peak_rows, len(self._rows))
        if not self._batched:
            return
        device = self._adapter.model.device
        if len(self._rows) == 1:
            from transformers import DynamicCache

            self._cache = DynamicCache()
            for i, (keys, values) in enumerate(kv):
                self._cache.update(keys, values, i)
            self._mask = torch.ones(1, length, dtype=torch.long, device=device)
            return
        pad = torch.nn.functional.pad
        width = self._mask.shape[1]
        grow, own = max(length - width, 0), max(width - length, 0)  # left padding: the batch's, the row's
        for layer, (keys, values) in zip(self._cache.layers, kv, strict=True):
            layer.keys = torch.cat([pad(layer.keys, (0, 0, grow, 0)), pad(keys, (0, 0, own, 0))])
            layer.values = torch.cat([pad(layer.values, (0, 0, grow, 0)), pad(values, (0, 0, own, 0))])
        row_mask = pad(torch.ones(1, length, dtype=torch.long, device=device), (own, 0))
        self._mask = torch.cat([pad(self._mask, (grow, 0)), row_mask])

    def _step(self) -> bool:
        """One forward over every running row; False when none could go on."""
        for row in [r for r in self._rows if r.cancel]:
            self._leave(row, aside=False)
            row.end("cancelled")
        if self._batched:
            for row in [r for r in self._rows if r.held_back]:
                self._leave(row, aside=True)
        rows = [r for r in self._rows if not r.held_back]  # one at a time: a row behind is just not stepped
        if not rows:
            return False
        adapter, torch = self._adapter, self._torch
        device = adapter.model.device
        tokens = torch.tensor([[r.next_token] for r in rows], device=device)
        with self._timed(rows[0].lora):
            if self._batched:
                ones = torch.ones(len(rows), 1, dtype=torch.long, device=device)
                self._mask = torch.cat([self._mask, ones], dim=1)
                positions = torch.tensor([[r.length] for r in rows], device=device)
                out = adapter.text_model(input_ids=tokens, attention_mask=self._mask, position_ids=positions,
                                    use_cache=True, **{adapter._cache_arg: self._cache}, **adapter._keep)
                logits = out.logits[:, -1].float()
            else:
                logits = adapter.decoder.step(tokens).unsqueeze(0)
        ended, failed = [], []
        for i, row in enumerate(rows):
            row.length += 1
            try:
                if row.advance(logits[i]):
                    ended.append(row)
            except Exception as exc:  # this row's grammar or sampling failed; the others go on
                failed.append((row, exc))
        for row in ended:
            self._leave(row, aside=False)
            row.end()
        for row, exc in failed:
            self._leave(row, aside=False)
            row.fail(exc)
        return True

    def _leave(self, row: Row, aside: bool) -> None:
        """Take a row out of the batch; `aside`: keep its KV (without padding) for when it returns."""
        index = self._rows.index(row)
        self._rows.pop(index)
        if not self._batched:
            return
        width = self._mask.shape[1]
        if aside:
            start = width - row.length
            row.kv = [(layer.keys[index:index + 1, :, start:].clone(), layer.values[index:index + 1, :, start:].clone())
                      for layer in self._cache.layers]
            self._aside.append(row)
        if not self._rows:
            self._cache = self._mask = None
            return
        torch = self._torch
        select = torch.tensor([i for i in range(len(self._rows) + 1) if i != index], device=self._mask.device)
        mask = self._mask[select]
        front = int(mask.any(dim=0).to(torch.int8).argmax())  # padding every row left has in front
        self._mask = mask[:, front:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[select, :, front:]
            layer.values = layer.values[select, :, front:]

    @contextlib.contextmanager
    def _timed(self, lora: str | None):
        """The model's own compute, for the adapter's stats, with LoRA adapter `lora` switched on; under
        the model lock (an echo's prompt logprobs and embeddings run their own forwards, and switch)."""
        adapter = self._adapter
        with adapter._lock:
            adapter._use_adapter(lora)
            started, started_cpu = time.perf_counter(), time.thread_time()
            try:
                yield
            finally:
                adapter._engine_s += time.perf_counter() - started
                adapter._engine_cpu_s += time.thread_time() - started_cpu


def batchable(model) -> bool:
    """Whether the model's DynamicCache is plain per-layer keys and values (rows can be padded and
    joined); sliding-window and other layer kinds are not."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config the cache cannot read: decode one request at a time
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
