"""Constrained JSON output for Hugging Face models (backends/guidance.py): the tokenizer as llguidance
sees it, and the mask applied to a torch logits row."""

from __future__ import annotations

import math

from backends import tools
from backends.contract import InvalidInput, SamplingParams
from backends.guidance import Constraint
from backends.hf.tokens import token_bytes
from backends.tools import ToolConstraint


class Guidance:
    """Compiles JSON schemas for one tokenizer; each `matcher` follows one generation."""

    def __init__(self, tokenizer, n_vocab: int, eos_ids: set[int]):
        self._tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._eos_ids = eos_ids
        self._compiled = None  # llguidance's view of the vocabulary, made on first use

    def constraint(self, params: SamplingParams, template: str) -> Constraint | ToolConstraint | None:
        """What holds this generation's output (backends/tools.py constraint_for)."""
        return tools.constraint_for(params, self._vocabulary, self._n_vocab, self._token_bytes, template)

    def _vocabulary(self):
        try:
            import llguidance.hf
        except ImportError:
            raise InvalidInput("constrained output needs the llguidance package on the server",
                               param="response_format") from None
        if self._compiled is None:
            self._compiled = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._n_vocab,
                                                          eos_token=sorted(self._eos_ids) or None)
        return self._compiled

    def _token_bytes(self, token: int) -> bytes:
        return token_bytes(self._tokenizer, token)

    def mask(self, constraint: Constraint | ToolConstraint, logits) -> None:
        """Set every token the constraint forbids next to -inf, in place (nothing while it waits)."""
        import torch

        allowed = constraint.allowed()
        if allowed is not None:
            logits[: self._n_vocab][~torch.from_numpy(allowed).to(logits.device)] = -math.inf
