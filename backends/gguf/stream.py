"""From sampled token ids to chunks: pieces, UTF-8 across tokens, stop strings, logprobs."""

from __future__ import annotations

import codecs
import ctypes

import numpy as np

from backends.contract import TextChunk, TextResult, TokenLogprob
from backends.text import StopMatcher


class Vocab:
    """A loaded model's vocabulary through llama.cpp's C API."""

    def __init__(self, lc, llama, spm: bool):
        self._lc = lc
        self.vocab = llama._model.vocab
        self.n_vocab = llama.n_vocab()
        self.bos = llama.token_bos()
        self.eos = llama.token_eos()
        self.spm = spm  # SentencePiece vocabularies add a leading space to the prompt
        self.adds_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        # Each token's bytes, read from llama.cpp once (a ctypes call and a buffer per token otherwise).
        self._pieces: dict[tuple[int, bool], bytes] = {}

    def piece(self, token: int, special: bool = False) -> bytes:
        key = (token, special)
        cached = self._pieces.get(key)
        if cached is None:
            cached = self._pieces[key] = self._read_piece(token, special)
        return cached

    def _read_piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self.vocab, token, buffer, 64, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self.vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    def text(self, token: int) -> str:
        """A special token's text (BOS, EOS) for chat templates; "" if the model has none."""
        return self.piece(token, special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def is_end(self, token: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self.vocab, token))

    def logprob(self, logits: np.ndarray, token: int, piece: bytes, offset: int, top: int) -> TokenLogprob:
        row = logits.astype(np.float64)
        peak = row.max()
        logz = peak + np.log(np.exp(row - peak).sum())
        entry: TokenLogprob = {"token": piece.decode("utf-8", errors="replace"), "logprob": float(row[token] - logz),
                               "bytes": list(piece), "text_offset": offset, "top_logprobs": []}
        if top:
            best = np.argpartition(-row, top)[:top] if top < len(row) else np.arange(len(row))
            for alt in best[np.argsort(-row[best])]:
                alt_piece = self.piece(int(alt))
                entry["top_logprobs"].append({"token": alt_piece.decode("utf-8", errors="replace"),
                                              "logprob": float(row[alt] - logz), "bytes": list(alt_piece)})
        return entry


class TokenStream:
    """Turns one sequence's sampled tokens into chunks: UTF-8 across tokens, stop strings held
    back until they can be ruled out, logprobs attached to the chunk their token's text is in.

    The scheduler drives it (see scheduler.py): emit() per sampled token, prompt_logits() and
    prompt_done() when the prompt's logprobs are asked for, finish() at the end."""

    def __init__(self, vocab: Vocab, prompt: list[int], stop: list[str], top: int | None, echo: str | None):
        self.vocab = vocab
        self.prompt = prompt
        self.top = top
        self.echo = echo
        self.wants_logits = top is not None
        self.offset = len(echo) if echo is not None else 0
        self.matcher = StopMatcher(stop)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending: list[TokenLogprob] = []
        self.decoded = 0  # characters decoded so far
        self.emitted = 0  # characters sent so far
        self.echo_entries: list[TokenLogprob] = []
        self.stopped = False  # a stop string was hit: nothing after it belongs to the output

    def prompt_logits(self, row: np.ndarray) -> None:
        """The logits after prompt position p, which scored the prompt's token p + 1."""
        position = len(self.echo_entries)
        if position + 1 < len(self.prompt):
            token = self.prompt[position + 1]
            self.echo_entries.append(self.vocab.logprob(row, token, self.vocab.piece(token), 0, self.top or 0))

    def prompt_done(self) -> TextChunk:
        """The echoed prompt with its logprobs (BOS, not being text, is left out)."""
        vocab, entries, offset, first_text = self.vocab, [], 0, True
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i, token in enumerate(self.prompt):
            piece = vocab.piece(token)
            if i == 0 and token == vocab.bos:
                continue
            if i == 0:  # nothing scored the first token
                entry: TokenLogprob = {"token": piece.decode("utf-8", errors="replace"), "logprob": None,
                                       "bytes": list(piece), "text_offset": 0, "top_logprobs": []}
            else:
                entry = self.echo_entries[i - 1]
            text = decoder.decode(piece)
            if first_text and text:
                first_text = False
                if text.startswith(" ") and vocab.spm and not (self.echo or "").startswith(" "):
                    text = text[1:]  # SPM's added leading space is not in the prompt the client sent
            entries.append({**entry, "text_offset": offset})
            offset += len(text)
        self.echo_entries = []
        return {"text": self.echo or "", "logprobs": entries}

    def emit(self, token: int, logits: np.ndarray | None) -> tuple[str | None, TextChunk | None, bool]:
        """(finish reason or None, chunk or None, whether the token counts as generated)."""
        if self.vocab.is_end(token):
            return "stop", None, False
        piece = self.vocab.piece(token)
        text = self.decoder.decode(piece)
        if logits is not None:
            self.pending.append(self.vocab.logprob(logits, token, piece, self.offset + self.decoded, self.top or 0))
        self.decoded += len(text)
        out, hit = self.matcher.feed(text)
        self.emitted += len(out)
        self.stopped = hit
        return ("stop" if hit else None), self._chunk(out, hit), True

    def finish(self, reason: str, produced: int) -> tuple[TextChunk | None, TextResult]:
        tail = None
        if not self.stopped:
            # Ended by length or end-of-generation: text held back for a stop string that never came,
            # and every counted token's logprobs (one with no text of its own included), are output.
            text = self.matcher.flush() + self.decoder.decode(b"", final=True)
            self.emitted += len(text)
            tail = self._chunk(text, True, everything=True)
        final: TextResult = {"finish_reason": reason,  # type: ignore[typeddict-item]
                             "usage": {"prompt_tokens": len(self.prompt), "completion_tokens": produced}}
        return tail, final

    def _chunk(self, text: str, final: bool, everything: bool = False) -> TextChunk | None:
        """Text safe to send, with the logprobs of the tokens that begin inside it (all of them if
        `everything`)."""
        sent_until = self.offset + self.emitted
        ready = list(self.pending) if everything else [e for e in self.pending if e["text_offset"] < sent_until]
        self.pending = [] if final else [e for e in self.pending if e["text_offset"] >= sent_until]
        if not text and not ready:
            return None
        chunk: TextChunk = {"text": text}
        if self.wants_logits:
            chunk["logprobs"] = ready
        return chunk

