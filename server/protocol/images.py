"""POST /v1/images/generations: the request and response on the wire."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.protocol.common import RequestBody, Seed

MAX_PROMPT_CHARS = 4000
MAX_N = 16
MAX_STEPS = 500


class ImageGenerationRequest(RequestBody):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str = Field(min_length=1, max_length=256)
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    size: str | None = Field(None, max_length=32, description="WIDTHxHEIGHT; the model's default if absent.")
    response_format: Literal["url", "b64_json"] = "url"
    # Extensions (not in OpenAI's spec): bounded here, and again against the model's own limits.
    seed: Seed | None = None
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0, allow_inf_nan=False)] | None = None
    # Accepted for compatibility and ignored: quality, style, user, background, output_format...
    user: str | None = None


def response(created: int, data: list[dict], size: str) -> dict:
    return {"created": created, "data": data, "size": size, "output_format": "png"}
