"""The GGUF JSON grammar keeps integer bounds (llama-cpp-python's converter dropped them)."""

from __future__ import annotations

import random
import re

import pytest
from llama_cpp import LlamaGrammar

from backends.gguf.grammar import integer_range, json_schema_to_gbnf


def as_regex(gbnf: str) -> re.Pattern:
    """The range rules use only literals, classes, groups and alternation: a regex says the same."""
    body = re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), gbnf).replace(" ", "").replace("(", "(?:")
    return re.compile(f"(?:{body})")


def test_integer_range_matches_exactly_the_integers_in_bounds():
    rng = random.Random(0)
    cases = [(0, 9), (0, 0), (-5, 5), (-123, -7), (3, 1000), (100, 199), (-1, -1), (-99999, 12),
             (0, 10**16 - 1), (-(10**16 - 1), 10**16 - 1)]
    cases += [(a, a + rng.randint(0, 30000)) for a in (rng.randint(-20000, 20000) for _ in range(60))]
    for low, high in cases:
        rule = integer_range(low, high)
        assert len(rule) < 5000, "an open range must not blow up the grammar"
        pattern = as_regex(rule)
        probes = {low, high, low - 1, high + 1, 0, -1, 1, *range(max(low - 50, -(10**17)), min(high + 50, low + 400))}
        for value in probes:
            assert bool(pattern.fullmatch(str(value))) == (low <= value <= high), (low, high, value)
        assert not any(pattern.fullmatch(bad) for bad in ("00", "01", "-0", "-01", "+1"))


def test_bounded_integers_and_numbers_become_grammar_ranges():
    schema = {"type": "object", "required": ["n", "x"],
              "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9},
                             "x": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 3.7}}}
    gbnf = json_schema_to_gbnf(schema)
    LlamaGrammar.from_string(gbnf, verbose=False)  # llama.cpp parses it
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    assert rules["n"] == "(([0-9])) space"
    assert rules["x"] == "(([1-3])) space"  # a bounded number narrows to the integers inside


@pytest.mark.parametrize("node", [{"type": "integer", "multipleOf": 3},
                                  {"type": "integer", "minimum": 5, "maximum": 4},
                                  {"type": "number", "minimum": 0.1, "maximum": 0.9}])
def test_bounds_a_grammar_cannot_keep_are_refused(node):
    with pytest.raises(ValueError):
        json_schema_to_gbnf({"type": "object", "properties": {"v": node}, "required": ["v"]})
