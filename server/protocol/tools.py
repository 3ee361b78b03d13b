"""Tool calling for engines that only know constrained JSON: OpenAI tools -> a JSON schema, and the
engine's JSON back -> OpenAI `tool_calls`. Pure functions; the chat route wires them in.

The engine is asked for exactly one JSON object:
  a call:     {"name": "<function>", "arguments": {...}}   (arguments follow the tool's parameters)
  a message:  {"content": "..."}                            (only offered for tool_choice "auto")
"auto" is an honest compromise for models we cannot read tool-call syntax from: the model must
answer in JSON, either a call or a message, rather than us guessing free text is a call.
"""

from __future__ import annotations

import json
import uuid
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


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolOutcome:
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str


def interpret(text: str, tool_plan: ToolPlan, engine_finish: str) -> ToolOutcome:
    """The engine's JSON as an assistant message: a tool call, a message, or (when the output is
    not one of those, e.g. cut by max_tokens) the raw text with the engine's finish reason."""
    try:
        value = json.loads(text)
    except ValueError:
        return ToolOutcome(text, None, engine_finish)
    if isinstance(value, dict) and value.get("name") in tool_plan.names and "arguments" in value:
        call = {"id": new_call_id(), "type": "function",
                "function": {"name": value["name"], "arguments": json.dumps(value["arguments"])}}
        return ToolOutcome(None, [call], "tool_calls")
    if tool_plan.allow_message and isinstance(value, dict) and isinstance(value.get("content"), str):
        return ToolOutcome(value["content"], None, engine_finish)
    return ToolOutcome(text, None, engine_finish)


def stream_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streaming fragments for complete calls: the first names the call, the next carries arguments."""
    deltas = []
    for index, call in enumerate(calls):
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": call["function"]["name"], "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]})
    return deltas
