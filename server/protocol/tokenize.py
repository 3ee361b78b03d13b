"""POST /tokenize and /detokenize (also under /v1): a model's own tokens, as vLLM and llama.cpp serve them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from server.protocol.chat import ChatMessage, Tool
from server.protocol.common import TokenId, WireModel


class TokenizeRequest(WireModel):
    """`prompt` is tokenized as a completion prompt; `messages` (with `tools`) through the model's chat
    template, as a chat request would render them."""

    model: str = Field(min_length=1, max_length=256)
    prompt: str | None = Field(None, max_length=4_000_000)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=4096)
    tools: list[Tool] | None = Field(None, max_length=256)
    add_special_tokens: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt and messages")
        return self


class DetokenizeRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    tokens: Annotated[list[TokenId], Field(max_length=1_000_000)]


def tokenized(tokens: list[int], pieces: list[str], context: int | None, with_pieces: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"tokens": tokens, "count": len(tokens), "max_model_len": context}
    if with_pieces:
        body["token_strs"] = pieces
    return body
