"""Constrained JSON output for Hugging Face models (backends/guidance.py): the tokenizer as llguidance
sees it, and the mask applied to a torch logits row."""

from __future__ import annotations

import math
from typing import Any

from backends.contract import InvalidInput
from backends.guidance import allowed_tokens, new_matcher


class Guidance:
    """Compiles JSON schemas for one tokenizer; each `matcher` follows one generation."""

    def __init__(self, tokenizer, n_vocab: int, eos_ids: set[int]):
        self._tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._eos_ids = eos_ids
        self._compiled = None  # llguidance's view of the vocabulary, made on first use

    def matcher(self, schema: dict[str, Any]):
        try:
            import llguidance.hf
        except ImportError:
            raise InvalidInput("constrained JSON output needs the llguidance package on the server",
                               param="response_format") from None
        if self._compiled is None:
            self._compiled = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._n_vocab,
                                                          eos_token=sorted(self._eos_ids) or None)
        return new_matcher(self._compiled, schema)

    def mask(self, matcher, logits) -> None:
        """Set every token the grammar forbids next to -inf, in place."""
        import torch

        allowed = torch.from_numpy(allowed_tokens(matcher, self._n_vocab)).to(logits.device)
        logits[: self._n_vocab][~allowed] = -math.inf
