"""Prompts to tokens for llama.cpp, in windows a cancel can stop between.

One llama_tokenize call is not interruptible, and on a SentencePiece vocabulary with byte fallback
it is quadratic in its input (engine-facts.md: 80k characters of one "word" take 0.37 s; 4 MB ran
past 300 s and kept a worker busy after its client left). So a long text is tokenized a window at
a time (a few KB, with overlap on both sides), and the work stops between windows when the client
leaves or once the tokens already exceed what the context can hold.

Windows must not change the tokens. Each window starts `overlap` bytes before the point where the
previous one's kept tokens end, so the tokens there see the same surroundings as in one call; a
window's tokens are kept only if one of them starts exactly at that point (the two tokenizations
agree there), and only up to `overlap` bytes before its end. Where they do not agree the overlap
grows, and past a limit the text is tokenized in one call after all: exact first, fast second.
Short texts (every ordinary prompt) are always one call.
"""

from __future__ import annotations

import ctypes

import numpy as np

from backends.contract import Cancel, ErrorCode, InvalidInput

WINDOW = 8192  # bytes of text tokenized per call, besides the overlap
_MAX_OVERLAP = 16384


class PromptTokenizer:
    def __init__(self, lc, llama, *, window: int = WINDOW, overlap: int | None = None):
        self._lc = lc
        self._llama = llama
        vocab = llama._model.vocab
        self._vocab = vocab
        n_vocab = llama.n_vocab()
        buffer = ctypes.create_string_buffer(1024)
        lengths = np.empty(n_vocab, dtype=np.int64)
        for token in range(n_vocab):  # ~1.5 us a token: 0.2 s for a 150k vocabulary, once per load
            n = lc.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
            lengths[token] = n if n >= 0 else -n  # negative: the piece needs -n bytes
        self.piece_bytes = lengths  # each token's text, special tokens as written (how prompts spell them)
        special = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED | lc.LLAMA_TOKEN_ATTR_UNKNOWN
        self.special = np.array([bool(lc.llama_token_get_attr(vocab, t) & special) for t in range(n_vocab)])
        self.longest_token_bytes = max(1, int(lengths.max()))
        self.window = window
        self.overlap = overlap or max(256, 4 * self.longest_token_bytes)
        # Only where a token's text is exactly the input it came from can windows line up by byte
        # offsets (SentencePiece and byte-level BPE; not WordPiece, which drops spaces and accents).
        kind = lc.llama_vocab_type(vocab)
        self._windowed = kind in (lc.LLAMA_VOCAB_TYPE_SPM, lc.LLAMA_VOCAB_TYPE_BPE)
        self._spm = kind == lc.LLAMA_VOCAB_TYPE_SPM
        probe = llama.tokenize(b"a", add_bos=False, special=False)
        self._space_prefix = int(self.piece_bytes[probe].sum()) == 2  # SentencePiece's leading space
        self._bos = lc.llama_vocab_bos(vocab)
        self._eos = lc.llama_vocab_eos(vocab)
        self._adds_bos = bool(lc.llama_vocab_get_add_bos(vocab))
        self._adds_eos = bool(lc.llama_vocab_get_add_eos(vocab))

    def tokenize(self, text: str, *, add_special: bool, cancel: Cancel, limit: int | None = None) -> list[int]:
        """The tokens llama.cpp's one call would give (parsing special-token text). Past `limit`
        tokens it may stop early (the caller refuses the prompt anyway); a cancel stops it with
        InvalidInput(CANCELLED)."""
        data = text.encode("utf-8")
        if not self._windowed or len(data) <= self.window + 2 * self.overlap:
            return self._call(data, add_special)
        if self._spm:
            # SentencePiece reads spaces as U+2581 before anything else, so a literal U+2581 gives the
            # same tokens as a space; as a space its bytes line up with the pieces' text.
            data = text.replace("\u2581", " ").encode("utf-8")
        tokens = self._windows(data, cancel, limit)
        if tokens is None:
            return self._call(data, add_special)
        head = [self._bos] if add_special and self._adds_bos else []
        tail = [self._eos] if add_special and self._adds_eos else []
        return head + tokens + tail

    def _call(self, data: bytes, add_special: bool) -> list[int]:
        return self._llama.tokenize(data, add_bos=add_special, special=True)

    def _windows(self, data: bytes, cancel: Cancel, limit: int | None) -> list[int] | None:
        tokens: list[int] = []
        start, overlap = 0, self.overlap
        while start < len(data):
            if cancel:
                raise InvalidInput("request cancelled while its prompt was read", code=ErrorCode.CANCELLED)
            taken = self._window(data, start, overlap)
            if taken is None:
                if overlap >= _MAX_OVERLAP:
                    return None
                overlap *= 4
                continue
            ids, start = taken
            tokens.extend(ids)
            if limit is not None and len(tokens) > limit:
                break
        return tokens

    def _window(self, data: bytes, start: int, overlap: int) -> tuple[list[int], int] | None:
        """The tokens from `start` on that one window agrees on, and where they end; None if the
        window's tokens have no boundary at `start`."""
        left = _char_start(data, max(0, start - overlap))
        right = _char_start(data, min(len(data), start + self.window + overlap))
        ids = self._call(data[left:right], add_special=False)
        lengths = self._text_lengths(ids)
        if lengths is None or int(lengths.sum()) != right - left:
            return None  # the pieces do not spell this text (a vocabulary that normalizes or strips)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        first = int(np.searchsorted(starts, start - left))
        if first >= len(ids) or starts[first] != start - left or (start and lengths[first] == 0):
            return None
        if right == len(data):
            return ids[first:], len(data)
        last = int(np.searchsorted(ends, right - left - overlap, side="right")) - 1
        # Never cut just after a special token: the space SentencePiece puts after it has no text
        # of its own, so it would belong to both sides of the cut.
        while last >= first and (self.special[ids[last]] or lengths[last] == 0):
            last -= 1
        if last < first:
            return None
        return ids[first:last + 1], left + int(ends[last])

    def _text_lengths(self, ids: list[int]) -> np.ndarray | None:
        """How many bytes of the tokenized text each token stands for. SentencePiece puts a space
        before the text and after every special token; that space is in the pieces, not the text."""
        if not ids:
            return None
        tokens = np.asarray(ids)
        lengths = self.piece_bytes[tokens].copy()
        if self._space_prefix:
            special = self.special[tokens]
            after = np.concatenate(([True], special[:-1])) & ~special
            lengths[after] -= 1
        return lengths


def _char_start(data: bytes, index: int) -> int:
    """`index`, moved back to the first byte of the UTF-8 character it falls in."""
    while 0 < index < len(data) and data[index] & 0xC0 == 0x80:
        index -= 1
    return index
