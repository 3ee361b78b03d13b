"""/v1/embeddings: the request model and the response (float lists or base64 little-endian float32)."""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from backends.spec import parse_keep_alive
from server.protocol.common import RequestBody

InputText = Annotated[str, Field(max_length=1_000_000)]


class EmbeddingRequest(RequestBody):
    model: str = Field(min_length=1, max_length=256)
    input: InputText | list[InputText] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    keep_alive: float | int | str | None = None

    @field_validator("input")
    @classmethod
    def _texts_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if not all(isinstance(item, str) for item in value):
                raise ValueError("token-array inputs are not supported; send the input as text")
            if len(value) > 2048:
                raise ValueError("at most 2048 inputs per request")
        return value

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("dimensions is not supported: models return their native size")
        return value

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: Any) -> Any:
        return None if value is None else parse_keep_alive(value)

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def response(model: str, vectors: list[list[float]], encoding_format: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
