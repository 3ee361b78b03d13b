"""Tool calling for engines that only know constrained JSON: OpenAI tools -> the JSON schema the
engine's output is held to. Pure functions; server/tool_syntax.py reads the output back as it streams.

The engine is asked for exactly one JSON object:
  a call:     {"name": "<function>", "arguments": {...}}   (arguments follow the tool's parameters)
  a message:  {"content": "..."}                            (only offered for tool_choice "auto")
"auto" is an honest compromise for models we cannot read tool-call syntax from: the model must
answer in JSON, either a call or a message, rather than us guessing free text is a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass
class ToolPlan:
    """What the route asks of the engine when tools are in play."""

    schema: dict[str, Any] | None  # the json_schema constraint, or None (tools unused)
    names: set[str] = field(default_factory=set)
    allow_message: bool = False


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function") or {}


def plan(tools: list[dict[str, Any]] | None, tool_choice: Any) -> ToolPlan:
    """tools + tool_choice -> the constraint. tool_choice: None, "none", "auto", "required", or
    {"type": "function", "function": {"name": ...}}. Raises ValueError for a name not in tools."""
    if not tools or tool_choice == "none":
        return ToolPlan(None)
    functions = {function_of(t).get("name"): function_of(t) for t in tools}
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in functions:
            raise ValueError(f"tool_choice names the function {name!r}, which is not in tools")
        chosen, allow_message = [name], False
    else:
        chosen, allow_message = list(functions), tool_choice in (None, "auto")
    options = [_call_schema(name, functions[name]) for name in chosen]
    if allow_message:
        options.append({"type": "object", "properties": {"content": {"type": "string"}},
                        "required": ["content"], "additionalProperties": False})
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return ToolPlan(schema, set(chosen), allow_message)


def _call_schema(name: str, function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or ANY_OBJECT
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}
