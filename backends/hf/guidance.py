"""Constrained JSON output for Hugging Face models with llguidance: a token mask per step."""

from __future__ import annotations

import math
from typing import Any

from backends.contract import InvalidInput


class Guidance:
    """Compiles JSON schemas for one tokenizer; each `matcher` follows one generation."""

    def __init__(self, tokenizer, n_vocab: int, eos_ids: set[int]):
        self._tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._eos_ids = eos_ids
        self._compiled = None  # llguidance's view of the vocabulary, made on first use

    def matcher(self, schema: dict[str, Any]):
        try:
            import llguidance
            import llguidance.hf
        except ImportError:
            raise InvalidInput("constrained JSON output needs the llguidance package on the server",
                               param="response_format") from None
        if self._compiled is None:
            self._compiled = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._n_vocab,
                                                          eos_token=sorted(self._eos_ids) or None)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._compiled)
        if is_error:
            raise InvalidInput(f"response_format schema is not usable: {messages[0]}", param="response_format")
        return llguidance.LLMatcher(self._compiled, grammar, log_level=0)

    def mask(self, matcher, logits) -> None:
        """Set every token the grammar forbids next to -inf, in place."""
        import torch

        if matcher.is_error():
            raise RuntimeError(f"constrained decoding failed: {matcher.get_error()}")
        words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.flatten()[: self._n_vocab].to(torch.bool).to(logits.device)
        logits[: self._n_vocab][~allowed] = -math.inf
