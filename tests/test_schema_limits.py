"""What a JSON schema may ask of constrained decoding (backends/schema_limits.py), checked alone."""

from __future__ import annotations

import math

import pytest

from backends.schema_limits import MAX_DEPTH, MAX_ENUM_VALUES, MAX_NODES, MAX_REPETITION, SchemaTooComplex, check


def refused_at(schema) -> str:
    with pytest.raises(SchemaTooComplex) as caught:
        check(schema)
    return caught.value.path


def test_ordinary_structured_output_and_tool_schemas_pass():
    check({"type": "object", "required": ["city", "days"], "additionalProperties": False,
           "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,40}$", "maxLength": 40},
                          "days": {"type": "integer", "minimum": 1, "maximum": 14},
                          "units": {"enum": ["metric", "imperial"]},
                          "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                          "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]}},
           "$defs": {"point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}]}}})
    check({"type": "string", "maxLength": 5000})
    check({"type": "string", "pattern": "^(a|b){1,100000}$"})


@pytest.mark.parametrize(("schema", "path"), [
    ({"type": "string", "maxLength": 10**7}, "schema.maxLength"),
    ({"type": "array", "minItems": MAX_REPETITION + 1}, "schema.minItems"),
    ({"type": "object", "properties": {"s": {"type": "string", "maxLength": math.inf}}}, "schema.properties.s.maxLength"),
    ({"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|b){1,100001}$"}}},
     "schema.properties.s.pattern"),
    ({"type": "string", "pattern": "x{100001}"}, "schema.pattern"),
    ({"type": "string", "pattern": "a" * 1001}, "schema.pattern"),
    ({"type": "integer", "maximum": 2**53}, "schema.maximum"),
    ({"type": ["integer", "null"], "exclusiveMinimum": -(10**20)}, "schema.exclusiveMinimum"),
    ({"type": "integer", "minimum": math.nan}, "schema.minimum"),
    ({"anyOf": [{"items": {"enum": list(range(MAX_ENUM_VALUES + 1))}}]}, "schema.anyOf.0.items.enum"),
    ({"patternProperties": {"^x{1000000}$": {}}}, "schema.patternProperties"),
])
def test_what_exceeds_a_limit_is_refused_naming_where(schema, path):
    assert refused_at(schema) == path


def test_nesting_and_size_are_bounded():
    deep: dict = {"type": "string"}
    for _ in range(MAX_DEPTH):
        deep = {"type": "array", "items": deep}
    assert refused_at(deep).endswith(".items")
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(MAX_NODES)}}
    assert refused_at(wide) == "schema"
    thousand_deep: dict = {}
    for _ in range(5000):  # far past Python's recursion limit: the walk is iterative
        thousand_deep = {"not": thousand_deep}
    assert refused_at(thousand_deep).startswith("schema.not.not")


def test_a_number_bound_may_be_a_large_float():
    check({"type": "number", "maximum": 1e300})
