"""/v1/messages and /v1/messages/count_tokens: Anthropic's Messages API onto the chat answer path.

Claude Code and the `anthropic` SDK speak this. Content blocks become chat messages: text and image
blocks content parts, tool_use blocks an assistant message's tool_calls, tool_result blocks tool
messages (before the rest of their user turn). Answers come back as text and tool_use blocks;
stop_reason says end_turn, max_tokens or tool_use. Errors on these routes use Anthropic's envelope.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from server.conversation import Conversation
from server.errors import InvalidRequest
from server.protocol.common import KeepAlive, MaxTokens, StopText, Temperature, TopP, WireModel

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "cancelled": "end_turn"}


class Message(WireModel):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[dict[str, Any]], Field(max_length=4096)]


class Tool(WireModel):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    type: str | None = None  # "custom" or absent; server tools (web_search_...) are not ours to run


class MessagesRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: MaxTokens
    messages: list[Message] = Field(min_length=1, max_length=4096)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: Annotated[list[StopText], Field(max_length=64)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Field(ge=0, le=100_000)] | None = None
    tools: list[Tool] | None = Field(None, max_length=256)
    tool_choice: dict[str, Any] | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class CountTokensRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=4096)
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = Field(None, max_length=256)


def conversation(body: MessagesRequest | CountTokensRequest) -> Conversation:
    messages: list[dict[str, Any]] = []
    system = _system_text(body.system)
    if system:
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(body.messages):
        messages.extend(_messages(message, index))
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                               "parameters": t.input_schema}}
             for t in body.tools or [] if t.type in (None, "custom")] or None
    if not isinstance(body, MessagesRequest):
        return Conversation(messages=messages, tools=tools)
    sampling: dict[str, Any] = {"stop": list(body.stop_sequences or [])}
    sampling.update({k: v for k, v in (("temperature", body.temperature), ("top_p", body.top_p),
                                       ("top_k", body.top_k)) if v is not None})
    parallel = not (body.tool_choice or {}).get("disable_parallel_tool_use", False)
    return Conversation(messages=messages, tools=tools, tool_choice=_tool_choice(body.tool_choice),
                        parallel_tool_calls=parallel,
                        max_tokens=body.max_tokens, sampling=sampling)


def _system_text(system: str | list[dict[str, Any]] | None) -> str:
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict) and b.get("type") == "text")
    return system or ""


def _tool_choice(choice: dict[str, Any] | None) -> Any:
    kind = (choice or {}).get("type", "auto")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(kind, "auto")


def _messages(message: Message, index: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    results, parts, calls = [], [], []
    for block in message.content:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source") or {})}})
        elif kind == "tool_use" and message.role == "assistant":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name", ""), "arguments": json.dumps(block.get("input", {}))}})
        elif kind == "tool_result" and message.role == "user":
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                            "content": _result_text(block.get("content"))})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a local model cannot continue another model's hidden reasoning
        else:
            raise InvalidRequest(f"messages.{index}.content: block type {kind!r} is not supported", param="messages")
    out = list(results)
    if parts or calls or not results:
        reply: dict[str, Any] = {"role": message.role, "content": parts if parts else (None if calls else "")}
        if calls:
            reply["tool_calls"] = calls
        out.append(reply)
    return out


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return str(source.get("url", ""))


def _result_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return "" if content is None else str(content)


def message(mid: str, model: str, content: list[dict[str, Any]], reason: str | None,
            usage: tuple[int, int]) -> dict[str, Any]:
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": STOP_REASONS.get(reason, reason) if reason else None, "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}
