"""The JSON constraint both text engines use (backends/guidance.py, llguidance) keeps numeric bounds
exactly, as the GGUF grammar it replaced had to be taught to (llama-cpp-python's converter dropped
minimum/maximum, so a strict {"maximum": 9} let a model write 39878); and backends/schema_limits.py
refuses what it could not keep exactly or cheaply."""

from __future__ import annotations

import random

import llama_cpp
import pytest

from backends import schema_limits
from backends.contract import InvalidInput
from backends.guidance import llama_tokenizer, new_matcher
from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny

EXACT = schema_limits.MAX_EXACT_INTEGER


@pytest.fixture(scope="module")
def tokenizer():
    tiny.build(DEFAULT_ROOT)
    llama = llama_cpp.Llama(str(DEFAULT_ROOT / tiny.CHAT_FILE), vocab_only=True, verbose=False)
    yield llama_tokenizer(llama_cpp, llama._model.vocab, llama.n_vocab())
    llama.close()


class Accepts:
    """Whether a schema's constraint lets a model write exactly `text` (and stop there)."""

    def __init__(self, tokenizer, schema):
        schema_limits.check(schema)
        self.tokenizer = tokenizer
        self.matcher = new_matcher(tokenizer, schema)

    def __call__(self, text: str) -> bool:
        self.matcher.reset()
        tokens = self.tokenizer.tokenize_str(text)
        return self.matcher.try_consume_tokens(tokens) == len(tokens) and self.matcher.is_accepting()


def test_integer_range_matches_exactly_the_integers_in_bounds(tokenizer):
    rng = random.Random(0)
    cases = [(0, 9), (0, 0), (-5, 5), (-123, -7), (3, 1000), (100, 199), (-1, -1), (-99999, 12),
             (0, EXACT), (-EXACT, EXACT), (EXACT - 500, EXACT), (10**15, 10**15 + 999)]
    cases += [(a, a + rng.randint(0, 30000)) for a in (rng.randint(-20000, 20000) for _ in range(60))]
    for low, high in cases:
        accepts = Accepts(tokenizer, {"type": "integer", "minimum": low, "maximum": high})
        probes = {low, high, low - 1, high + 1, 0, -1, 1, *range(max(low - 50, -(10**17)), min(high + 50, low + 400))}
        for value in probes:
            assert accepts(str(value)) == (low <= value <= high), (low, high, value)
        assert not any(accepts(bad) for bad in ("00", "01", "-01", "+1", "1.0", "1e2"))
        assert not accepts("-0") or low <= 0 <= high  # JSON's -0 is the integer 0: fine when 0 is


def test_exclusive_and_fractional_bounds_are_kept(tokenizer):
    integer = Accepts(tokenizer, {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 10})
    assert [v for v in range(0, 13) if integer(str(v))] == list(range(4, 10))
    number = Accepts(tokenizer, {"type": "number", "exclusiveMinimum": 0.5, "maximum": 3.7})
    assert all(number(v) for v in ("0.51", "1", "3.7", "2.25"))
    assert not any(number(v) for v in ("0.5", "0.49", "3.71", "4", "-1"))


def test_multiple_of_is_kept(tokenizer):
    accepts = Accepts(tokenizer, {"type": "integer", "multipleOf": 3, "minimum": -9, "maximum": 30})
    assert [v for v in range(-12, 34) if accepts(str(v))] == list(range(-9, 31, 3))


def test_bounds_that_cannot_be_kept_exactly_are_refused(tokenizer):
    with pytest.raises(InvalidInput, match="minimum"):
        Accepts(tokenizer, {"type": "integer", "minimum": 5, "maximum": 4})
    for bound in ("minimum", "maximum", "exclusiveMaximum"):
        with pytest.raises(schema_limits.SchemaTooComplex, match=f"schema.properties.v.{bound}"):
            schema_limits.check({"type": "object", "properties": {"v": {"type": "integer", bound: 10**16 - 1}}})
