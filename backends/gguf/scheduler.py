"""Continuous batching for llama.cpp: one thread owns the context and decodes every running
sequence in one llama_decode per step (each on its own sequence id over a unified KV cache).

Requests join and leave between steps; prompts are prefilled in chunks beside running decodes.
A sequence reserves prompt + max tokens of KV cells when admitted, so the pool never overflows:
requests that do not fit wait for others to finish. Each idle slot keeps its last request's KV
cells, and a new request takes the idle slot sharing the longest prefix (chat follow-ups skip
re-reading the conversation); other idle slots are cleared then.

LoRA adapters apply to the whole context, so one step decodes the sequences of one adapter (or
of the base): with several in play, steps take turns among them, and a slot's cached cells are
reused only by a request for the same adapter. An image in a prompt (gguf/vision.py) sits in the
token list as placeholders (one negative id per image, repeated for its positions); its
embeddings are decoded apart, on this thread, just before the text that follows it.

What a sequence produces is decided by its `stream` (stream.py): emit(token, logits) ->
(finish reason, chunk, counted); prompt_logits(row) for each prompt position and then
prompt_done() -> the echo chunk, when the prompt's logprobs are asked for;
finish(reason) -> the final dict.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from typing import Any

import numpy as np

_IDLE_WAIT_S = 0.05  # how often an idle scheduler looks for cancelled waiters
# Backpressure: a sequence whose reader has this many chunks unread is not decoded until it reads
# (its client is slow or paused); it keeps its slot and cells meanwhile.
_MAX_UNREAD = 32


class Sequence:
    """One request's decoding state. The caller reads `events`: ("chunk", dict), ("end", dict) or
    ("error", exception)."""

    def __init__(self, tokens: list[int], sampler, budget: int, stream, cancel, prompt_logits: bool = False,
                 constraint=None, group: str | None = None, media=None):
        self.tokens = tokens
        self.sampler = sampler
        self.budget = budget
        self.stream = stream
        self.cancel = cancel
        self.prompt_logits = prompt_logits
        self.constraint = constraint  # backends/guidance.py: masks the logits before each sample
        # The worker's pipe, when it gave one: chunks go out from the scheduler's thread, and only the
        # end or an error through `events` (the call's thread would otherwise wake once per token).
        self.outlet = getattr(cancel, "outlet", None)
        self.group = group  # the LoRA adapter it decodes with (None: the base)
        self.media = media  # gguf/vision.py ImagePrompt: decodes the images its placeholders stand for
        self.events: queue.Queue = queue.Queue()
        self.slot: int | None = None
        self.n_past = 0
        self.pending: list[int] = []
        self.in_prompt = True
        self.produced = 0

    @property
    def reserve(self) -> int:
        return len(self.tokens) + self.budget

    @property
    def held_back(self) -> bool:
        """Its reader is behind: it is not decoded until it reads (it keeps its slot and cells)."""
        if self.outlet is not None:
            return self.outlet.paused
        return self.events.qsize() >= _MAX_UNREAD


class Scheduler:
    def __init__(self, lc, ctx, n_ctx: int, n_parallel: int, n_batch: int, n_vocab: int, counters: dict,
                 use_group=None):
        from llama_cpp import _internals

        self._lc = lc
        self._ctx = ctx
        self._n_ctx = n_ctx
        self._n_batch = n_batch
        self._n_vocab = n_vocab
        self._counters = counters
        self._memory = lc.llama_get_memory(ctx.ctx)
        self._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self._slots: list[list[int]] = [[] for _ in range(n_parallel)]  # tokens whose KV each slot holds
        self._slot_groups: list[str | None] = [None] * n_parallel  # the adapter each slot's cells were made with
        self._use_group = use_group  # sets the context's adapters for a group (gguf/lora.py)
        self._group: str | None = None
        self._free = set(range(n_parallel))
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._cv:
            self._waiting.append(seq)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(10)
        self._batch.close()

    # ---- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._active and not self._waiting:
                    self._cv.wait(_IDLE_WAIT_S)
                if self._stopping:
                    break
                self._drop_cancelled_waiters()
                self._admit()
            if not self._active:
                with self._cv:
                    self._cv.wait(_IDLE_WAIT_S)  # waiters that do not fit yet
                continue
            try:
                if not self._step():
                    with self._cv:
                        self._cv.wait(_IDLE_WAIT_S)  # every running sequence waits for its reader
            except Exception as exc:  # the engine failed: fail what was running, keep serving
                for seq in list(self._active):
                    self._fail(seq, exc)
        for seq in [*self._active, *self._waiting]:
            self._fail(seq, RuntimeError("the model is shutting down"))

    def _drop_cancelled_waiters(self) -> None:
        for seq in [s for s in self._waiting if s.cancel]:
            self._waiting.remove(seq)
            self._finish(seq, "cancelled")

    def _admit(self) -> None:
        while self._waiting and self._free:
            seq = self._waiting[0]
            reserved = sum(s.reserve for s in self._active)
            if self._active and reserved + seq.reserve > self._n_ctx:
                return  # first come, first served: wait for room
            slot, shared = self._best_slot(seq)
            limit = len(seq.tokens) - 1  # decode at least one token for fresh logits
            source, source_shared = self._best_source(seq)
            if min(source_shared, limit) > min(shared, limit) and source != slot:
                # Share the prefix cells another sequence holds (a unified KV cell can belong to
                # several sequences): concurrent requests with one system prompt read it once.
                self._clear(slot)
                shared = min(source_shared, limit)
                self._lc.llama_memory_seq_cp(self._memory, source, slot, 0, shared)
                self._slots[slot] = list(self._slots[source][:shared])
            # Idle slots' cells would stay in every step's attention span (measured: ~17% slower
            # single-stream decode), so only the slot taken keeps its cached prefix.
            for i in self._free:
                if i != slot and self._slots[i]:
                    self._clear(i)
            self._waiting.popleft()
            self._free.discard(slot)
            shared = min(shared, limit)
            self._lc.llama_memory_seq_rm(self._memory, slot, shared, -1)
            del self._slots[slot][shared:]
            seq.slot, seq.n_past, seq.pending = slot, shared, list(seq.tokens[shared:])
            self._slot_groups[slot] = seq.group
            self._active.append(seq)

    def _best_slot(self, seq: Sequence) -> tuple[int, int]:
        best, best_shared = min(self._free), 0
        if seq.prompt_logits:
            return best, 0  # every prompt position must be decoded again
        for slot in sorted(self._free):
            shared = _common_prefix(self._slots[slot], seq.tokens) if self._slot_groups[slot] == seq.group else 0
            if shared > best_shared:
                best, best_shared = slot, shared
        return best, best_shared

    def _best_source(self, seq: Sequence) -> tuple[int, int]:
        """The slot, busy or idle, whose cached tokens share the longest prefix with `seq`."""
        best, best_shared = -1, 0
        if seq.prompt_logits:
            return best, 0
        for slot, cached in enumerate(self._slots):
            shared = _common_prefix(cached, seq.tokens) if self._slot_groups[slot] == seq.group else 0
            if shared > best_shared:
                best, best_shared = slot, shared
        return best, best_shared

    def _clear(self, slot: int) -> None:
        self._lc.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self._slots[slot] = []

    def _step(self) -> bool:
        """One llama_decode over the running sequences of one adapter group (taking turns when several
        are in play); False when none could go on."""
        groups = list(dict.fromkeys(s.group for s in self._active))
        turn = (groups.index(self._group) + 1) % len(groups) if self._group in groups else 0
        return any(self._step_group(group) for group in groups[turn:] + groups[:turn])

    def _step_group(self, group: str | None) -> bool:
        batch = self._batch.batch
        n = 0
        outputs: list[tuple[Sequence, int, int]] = []  # (sequence, first batch index, count)
        # Running decodes first (one token each), then prompt chunks in the room left.
        order = sorted((s for s in self._active if s.group == group), key=lambda s: s.in_prompt)
        if order and group != self._group and self._use_group is not None:
            self._use_group(group)
            self._group = group
        for seq in order:
            if seq.cancel:
                self._finish(seq, "cancelled")
                continue
            room = self._n_batch - n
            if room <= 0:
                break
            if not seq.in_prompt and seq.held_back:
                continue
            if seq.pending and seq.pending[0] < 0 and not self._decode_image(seq):
                continue
            take = _up_to_image(seq.pending, room)
            if not take:
                continue
            last_of_prompt = len(take) == len(seq.pending)
            start = n
            for i, token in enumerate(take):
                batch.token[n] = token
                batch.pos[n] = seq.n_past + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.slot
                batch.logits[n] = (seq.in_prompt and seq.prompt_logits) or (last_of_prompt and i == len(take) - 1)
                n += 1
            seq.n_past += len(take)
            self._slots[seq.slot].extend(take)
            del seq.pending[: len(take)]
            outputs.append((seq, start, len(take)))
        if n == 0:
            return False
        batch.n_tokens = n
        self._counters["peak_sequences"] = max(self._counters.get("peak_sequences", 0), len(outputs))
        started, started_cpu = time.perf_counter(), time.thread_time()
        code = self._lc.llama_decode(self._ctx.ctx, batch)
        self._counters["engine_s"] += time.perf_counter() - started  # the model's own compute
        self._counters["engine_cpu_s"] += time.thread_time() - started_cpu  # of it, on this thread's CPU
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        for seq, start, count in outputs:
            if seq.in_prompt and seq.prompt_logits:
                for i in range(count):
                    seq.stream.prompt_logits(self._logits(start + i))  # used at once, never stored
            if seq.pending:
                continue  # more prompt to read before sampling
            if seq.in_prompt:
                seq.in_prompt = False
                if seq.prompt_logits:
                    self._put_chunk(seq, seq.stream.prompt_done())
            self._sample(seq, start + count - 1)
        return True

    def _decode_image(self, seq: Sequence) -> bool:
        """Decode the image whose placeholders lead the sequence's pending tokens (its own llama_decode
        calls, on this thread); False if it failed (the sequence is failed, the others go on)."""
        key = seq.pending[0]
        count = next((i for i, t in enumerate(seq.pending) if t != key), len(seq.pending))
        try:
            seq.n_past = seq.media.decode(self._ctx.ctx, key, seq.n_past, seq.slot, self._n_batch)
        except Exception as exc:
            self._fail(seq, exc)
            return False
        self._slots[seq.slot].extend(seq.pending[:count])
        del seq.pending[:count]
        return True

    def _sample(self, seq: Sequence, index: int) -> None:
        if seq.cancel:
            self._finish(seq, "cancelled")
            return
        logits = self._logits(index) if seq.stream.wants_logits else None
        if seq.constraint is not None:
            row = self._logits(index)
            logits = None if logits is None else logits.copy()  # logprobs are the model's, before the mask
            try:
                seq.constraint.mask(row)  # in llama.cpp's own buffer: the sampler chain reads it next
            except RuntimeError as exc:
                self._fail(seq, exc)
                return
        token = self._lc.llama_sampler_sample(seq.sampler.sampler, self._ctx.ctx, index)
        if seq.constraint is not None:
            try:
                seq.constraint.accept(token)
            except RuntimeError as exc:
                self._fail(seq, exc)
                return
        reason, chunk, counted = seq.stream.emit(token, logits)
        self._put_chunk(seq, chunk)
        if counted:
            seq.produced += 1
            self._counters["tokens_generated"] += 1
        if reason is None and seq.constraint is not None and seq.constraint.finished:
            reason = "stop"
        if reason is None and seq.produced >= seq.budget:
            reason = "length"
        if reason is not None:
            self._finish(seq, reason)
        else:
            seq.pending = [token]

    def _logits(self, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx.ctx, index), shape=(self._n_vocab,))

    @staticmethod
    def _put_chunk(seq: Sequence, chunk: dict[str, Any] | None) -> None:
        if not chunk:
            return
        if seq.outlet is not None:
            seq.outlet.send(chunk)
        else:
            seq.events.put(("chunk", chunk))

    def _release(self, seq: Sequence) -> None:
        with contextlib.suppress(ValueError):
            self._active.remove(seq)
        if seq.slot is not None:
            self._free.add(seq.slot)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._release(seq)
        tail, final = seq.stream.finish(reason, seq.produced)
        self._put_chunk(seq, tail)
        if seq.outlet is not None:
            seq.outlet.finish(final)  # from here: the call's thread need not wake first
        seq.events.put(("end", final))

    def _fail(self, seq: Sequence, exc: Exception) -> None:
        self._release(seq)
        if seq.slot is not None:
            self._clear(seq.slot)
        seq.events.put(("error", exc))


def _up_to_image(pending: list[int], room: int) -> list[int]:
    """The next tokens to batch: at most `room`, stopping before an image's placeholders."""
    take = pending[:room]
    for i, token in enumerate(take):
        if token < 0:
            return take[:i]
    return take


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    shared = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        shared += 1
    return shared
