"""JSON schema -> GBNF for llama.cpp, with the integer bounds llama-cpp-python's converter ignores.

llama-cpp-python's SchemaConverter drops minimum/maximum (a TODO in its source), so a strict
schema with {"type": "integer", "maximum": 9} let the model write 39878. Integer bounds become a
digit-range grammar here. A bounded "number" is narrowed to the integers within its bounds: every
output then validates (fractions at the edges would need a far larger grammar). multipleOf cannot
be expressed this way and is refused rather than silently ignored.
"""

from __future__ import annotations

import json
import math
from typing import Any

# The converter's integral-part allows at most 16 digits: an open side ends there too.
_LIMIT = 10**16 - 1
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class BoundedConverter(SchemaConverter):
        def visit(self, node, name):
            if isinstance(node, dict) and node.get("type") in ("number", "integer"):
                if "multipleOf" in node:
                    raise ValueError("multipleOf is not supported")
                if any(key in node for key in _BOUNDS) and not {"const", "enum", "$ref", "oneOf", "anyOf"} & set(node):
                    low, high = integer_bounds(node)
                    rule = integer_range(low, high)
                    return self._add_rule(name + "-" if name in RESERVED_NAMES else name or "root", f"({rule}) space")
            return super().visit(node, name)

    converter = BoundedConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = converter.resolve_refs(json.loads(json.dumps(schema)), "stdin")
    converter.visit(schema, "")
    return converter.format_grammar()


def integer_bounds(node: dict[str, Any]) -> tuple[int, int]:
    low, high = -_LIMIT, _LIMIT
    if "minimum" in node:
        low = max(low, math.ceil(node["minimum"]))
    if "exclusiveMinimum" in node:
        low = max(low, math.floor(node["exclusiveMinimum"]) + 1)
    if "maximum" in node:
        high = min(high, math.floor(node["maximum"]))
    if "exclusiveMaximum" in node:
        high = min(high, math.ceil(node["exclusiveMaximum"]) - 1)
    if low > high:
        raise ValueError(f"no integer lies between the bounds {low} and {high}")
    if max(abs(low), abs(high)) > _LIMIT:
        raise ValueError("integer bounds beyond 16 digits are not supported")
    return low, high


def integer_range(low: int, high: int) -> str:
    """A GBNF alternation matching exactly the decimal integers in [low, high] (no leading zeros)."""
    parts = []
    if low < 0:
        parts.append('"-" (' + _natural_range(max(1, -high) if high < 0 else 1, -low) + ")")
    if high >= 0:
        parts.append(_natural_range(max(0, low), high))
    return " | ".join(parts)


def _natural_range(low: int, high: int) -> str:
    """Non-negative integers in [low, high], split by number of digits."""
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        lo = low if digits == len(str(low)) else 10 ** (digits - 1)
        hi = high if digits == len(str(high)) else 10**digits - 1
        parts.append(_same_length(str(lo), str(hi)))
    return " | ".join(f"({p})" for p in parts)


def _same_length(lo: str, hi: str) -> str:
    """Digit strings of one length between lo and hi inclusive."""
    if len(lo) == 1:
        return f"[{lo}-{hi}]"
    if set(lo[1:]) == {"0"} and set(hi[1:]) == {"9"}:  # a full tail: no split (else the rule grows exponentially)
        return f"[{lo[0]}-{hi[0]}]" + " [0-9]" * (len(lo) - 1)
    if lo[0] == hi[0]:
        return f'"{lo[0]}" ({_same_length(lo[1:], hi[1:])})'
    rest = len(lo) - 1
    parts = [f'"{lo[0]}" ({_same_length(lo[1:], "9" * rest)})']
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + " [0-9]" * rest)
    parts.append(f'"{hi[0]}" ({_same_length("0" * rest, hi[1:])})')
    return " | ".join(f"({p})" for p in parts)
