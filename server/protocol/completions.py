"""/v1/completions (legacy text completion): the request model and response builders."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from server.protocol.common import GenerationRequest, MaxTokens, StreamOptions, TokenIds

PromptText = Annotated[str, Field(max_length=4_000_000)]


class CompletionRequest(GenerationRequest):
    prompt: PromptText | list[PromptText] | TokenIds | list[TokenIds] = ""
    suffix: PromptText | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    max_tokens: MaxTokens | None = 16  # the spec's default for this endpoint
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None  # only 1: we do not rank candidates
    stream_options: StreamOptions | None = None

    @field_validator("prompt")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not isinstance(value[0], int) and len(value) > 64:
            raise ValueError("at most 64 prompts per request")
        return value

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, as text or as token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]
        return list(self.prompt) or [""]

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def body(cid: str, created: int, model: str, choices: list[dict], usage: dict | None) -> dict[str, Any]:
    out = {"id": cid, "object": "text_completion", "created": created, "model": model,
           "system_fingerprint": None, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out
