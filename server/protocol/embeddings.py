"""/v1/embeddings: the request model and the response (float lists or base64 little-endian float32)."""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from server.protocol.common import KeepAlive, RequestBody, TokenIds

InputText = Annotated[str, Field(max_length=1_000_000)]


class EmbeddingRequest(RequestBody):
    model: str = Field(min_length=1, max_length=256)
    input: InputText | list[InputText] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    keep_alive: KeepAlive = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if len(value) > 2048 and not isinstance(value[0], int):
                raise ValueError("at most 2048 inputs per request")
        return value

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("dimensions is not supported: models return their native size")
        return value

    def inputs(self) -> list[str]:
        """The inputs as text ([] when they came as token ids)."""
        if isinstance(self.input, str):
            return [self.input]
        return [] if self.token_inputs() is not None else list(self.input)

    def token_inputs(self) -> list[list[int]] | None:
        """The inputs as token ids, or None when they came as text."""
        if isinstance(self.input, list) and isinstance(self.input[0], int):
            return [list(self.input)]
        if isinstance(self.input, list) and isinstance(self.input[0], list):
            return [list(ids) for ids in self.input]
        return None


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
