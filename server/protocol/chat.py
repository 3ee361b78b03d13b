"""/v1/chat/completions: the request model and builders for responses and stream chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from server.protocol.common import GenerationRequest, MaxTokens, StreamOptions, WireModel

TopLogprobs = Annotated[int, Field(ge=0, le=20)]


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class JsonSchemaFormat(WireModel):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def normalised(self) -> dict[str, Any] | None:
        """The contract's shape: None, {"type": "json_object"} or {"type": "json_schema", "schema": ...}."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        schema = self.json_schema.schema_ if self.json_schema and self.json_schema.schema_ else {"type": "object"}
        return {"type": "json_schema", "schema": schema}


class FunctionDef(WireModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(WireModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(WireModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(WireModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: MaxTokens | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def token_limit(self) -> int | None:
        """max_completion_tokens wins over the older max_tokens when both come."""
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def tool_choice_value(self) -> Any:
        choice = self.tool_choice
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice


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


def choice(index: int, content: str | None, finish_reason: str, logprobs: dict | None = None,
           **message: Any) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": content, **message},
        "logprobs": logprobs,
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


def delta(index: int, finish_reason: str | None = None, logprobs: dict | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": logprobs, "finish_reason": finish_reason}
