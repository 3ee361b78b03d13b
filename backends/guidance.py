"""Constrained JSON output for every text engine, with llguidance: a JSON schema compiled against
the engine's vocabulary, then before each sample a mask of the tokens the schema allows next.

One constraint engine for llama.cpp and Hugging Face models, so a schema means the same on both.
It replaced GBNF on the llama.cpp side (engine-facts.md, "Grammars and JSON schemas"): GBNF costs
~13 ms a token on a 32k vocabulary where a mask costs ~0.2 ms; GBNF turns {0,5000} silently into
`*`; and the nested rules llama-cpp-python writes for a maxLength overflowed llama.cpp's recursive
parser (a crashed worker). llguidance builds its lexer lazily, so a maxLength costs nothing up
front; backends/schema_limits.py still bounds what a schema may ask before anything is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.contract import InvalidInput


def new_matcher(tokenizer, schema: dict[str, Any]):
    """An llguidance matcher following `schema` over `tokenizer` (an llguidance LLTokenizer)."""
    import llguidance

    # JSON allows whitespace between tokens, without bound; a model would be free to pad forever.
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    return _matcher(tokenizer, grammar, "response_format schema", "response_format")


def lark_matcher(tokenizer, lark: str):
    """An llguidance matcher following a Lark grammar (backends/tools.py writes them for tool calls)."""
    import llguidance

    return _matcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), "tool schema", "tools")


def _matcher(tokenizer, grammar: str, what: str, param: str):
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise InvalidInput(f"{what} is not usable: {messages[0]}", param=param)
    return llguidance.LLMatcher(tokenizer, grammar, log_level=0)


def allowed_tokens(matcher, n_vocab: int) -> np.ndarray:
    """A boolean row: which of the first n_vocab tokens the matcher allows next."""
    if matcher.is_error():
        raise RuntimeError(f"constrained decoding failed: {matcher.get_error()}")
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    return bits[:n_vocab].astype(bool)


class Constraint:
    """One generation's schema on a numpy logits row (llama.cpp's): mask before sampling, accept after."""

    def __init__(self, matcher, n_vocab: int):
        self._matcher = matcher
        self._n_vocab = n_vocab

    def allowed(self) -> np.ndarray | None:
        """Which of the first n_vocab tokens the schema allows next."""
        return allowed_tokens(self._matcher, self._n_vocab)

    def mask(self, logits: np.ndarray) -> None:
        """Set every token the schema forbids next to -inf, in place."""
        logits[: self._n_vocab][~allowed_tokens(self._matcher, self._n_vocab)] = -np.inf

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding failed: {self._matcher.get_error() or 'token refused'}")

    @property
    def finished(self) -> bool:
        """The schema is complete: nothing but the end may follow."""
        return self._matcher.is_stopped()


def llama_tokenizer(lc, vocab, n_vocab: int):
    """llguidance's view of a llama.cpp vocabulary, every end-of-generation token an EOS."""
    import llguidance.llamacpp

    ends = [t for t in range(n_vocab) if lc.llama_vocab_is_eog(vocab, t)]
    return llguidance.llamacpp.lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=ends or None)
