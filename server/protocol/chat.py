"""/v1/chat/completions: the request model and builders for responses and stream chunks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from server.protocol.common import GenerationRequest, MaxTokens, StreamOptions, WireModel


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: MaxTokens | None = None
    stream_options: StreamOptions | None = None

    def token_limit(self) -> int | None:
        """max_completion_tokens wins over the older max_tokens when both come."""
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def completion(cid: str, created: int, model: str, choices: list[dict], usage: dict) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage,
    }


def choice(index: int, content: str, finish_reason: str, **message: Any) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": content, **message},
        "logprobs": None,
        "finish_reason": finish_reason,
    }


def chunk(cid: str, created: int, model: str, choices: list[dict], with_usage: bool) -> dict[str, Any]:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if with_usage:
        body["usage"] = None
    return body


def delta(index: int, finish_reason: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish_reason}
