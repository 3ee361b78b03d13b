"""What a JSON schema may ask of constrained decoding, checked before any grammar is built.

A schema is client input that becomes a grammar, and a grammar costs memory and time in proportion
to what it spells out. llama.cpp's GBNF parser once crashed a worker (stack overflow) on
{"maxLength": 5000}; llguidance, the constraint engine both text engines use now
(backends/guidance.py), builds lazily and survives that, but no engine should be handed 10^7
repetitions, a 10,000-value enum or a schema nested 500 deep. Each limit is far above what real
structured-output and tool schemas use (OpenAI's own: 10 levels of nesting, 1,000 enum values).

Integer bounds must also be exact: llguidance reads them as doubles, so past 2^53 a bound would
silently move; such bounds are refused rather than enforced loosely.

Pure Python on plain data: the server checks a request's schemas with it before touching a model
(each with its own path, e.g. tools.0.function.parameters.properties.city.maxLength), and the
engines check again on what reaches them.
"""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 32  # nested subschemas
MAX_NODES = 10_000  # subschemas in all
MAX_REPETITION = 100_000  # minLength/maxLength/minItems/maxItems/min-maxProperties, and {m,n} in patterns
MAX_ENUM_VALUES = 1_000  # enum and const values across the schema
MAX_TEXT = 120_000  # characters of property names, enum and const values
MAX_PATTERN = 1_000  # characters of one regular expression
MAX_EXACT_INTEGER = 2**53 - 1  # an integer bound beyond this would not be enforced exactly

_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
           "maxContains")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
# keywords whose value is one subschema, a list of them, or a name -> subschema map
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
        "additionalItems", "unevaluatedItems", "unevaluatedProperties")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


class SchemaTooComplex(ValueError):
    """The schema asks for more than constrained decoding allows; `path` says where."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


def check(schema: Any, path: str = "schema") -> None:
    """Raise SchemaTooComplex at the first limit `schema` exceeds (walked without recursion)."""
    nodes = enum_values = text = 0
    stack: list[tuple[Any, str, int]] = [(schema, path, 1)]
    while stack:
        node, where, depth = stack.pop()
        if not isinstance(node, dict):
            continue  # true/false schemas; malformed ones are the compiler's to refuse
        nodes += 1
        if nodes > MAX_NODES:
            raise SchemaTooComplex(path, f"has more than {MAX_NODES} subschemas")
        if depth > MAX_DEPTH:
            raise SchemaTooComplex(where, f"is nested more than {MAX_DEPTH} levels deep")
        for key in _COUNTS:
            value = node.get(key)
            if _number(value) and not value <= MAX_REPETITION:
                raise SchemaTooComplex(f"{where}.{key}", f"is {value}; at most {MAX_REPETITION} is supported")
        if node.get("type") == "integer" or (isinstance(node.get("type"), list) and "integer" in node["type"]):
            for key in _BOUNDS:
                value = node.get(key)
                if _number(value) and not abs(value) <= MAX_EXACT_INTEGER:
                    raise SchemaTooComplex(f"{where}.{key}", f"is {value}; integer bounds must lie within "
                                           f"±{MAX_EXACT_INTEGER} (2^53 - 1) to be enforced exactly")
        if isinstance(node.get("pattern"), str):
            _check_pattern(node["pattern"], f"{where}.pattern")
        for key in ("enum", "const"):
            if key in node:
                values = node[key] if key == "enum" and isinstance(node[key], list) else [node[key]]
                enum_values += len(values)
                text += sum(len(v) for v in values if isinstance(v, str))
                if enum_values > MAX_ENUM_VALUES:
                    raise SchemaTooComplex(f"{where}.{key}", f"makes more than {MAX_ENUM_VALUES} enum/const values "
                                           "in the schema")
        for key in _ONE:
            if key in node:
                stack.append((node[key], f"{where}.{key}", depth + 1))
        for key in _LIST:
            if isinstance(node.get(key), list):
                stack.extend((child, f"{where}.{key}.{i}", depth + 1) for i, child in enumerate(node[key]))
        for key in _MAP:
            if isinstance(node.get(key), dict):
                for name, child in node[key].items():
                    text += len(name)
                    if key == "patternProperties":
                        _check_pattern(name, f"{where}.{key}")
                    stack.append((child, f"{where}.{key}.{name}", depth + 1))
        if text > MAX_TEXT:
            raise SchemaTooComplex(path, f"spells more than {MAX_TEXT} characters of names and values")


def _number(value: Any) -> bool:
    """A JSON number; Infinity and NaN (which Python's json reads) count as too large."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_pattern(pattern: str, where: str) -> None:
    if len(pattern) > MAX_PATTERN:
        raise SchemaTooComplex(where, f"is {len(pattern)} characters long; at most {MAX_PATTERN} are supported")
    for match in _REPEAT.finditer(pattern):
        low, high = int(match.group(1)), match.group(2)
        if max(low, int(high) if high else 0) > MAX_REPETITION:
            raise SchemaTooComplex(where, f"repeats {match.group(0)}; at most {MAX_REPETITION} repetitions are "
                                   "supported")
