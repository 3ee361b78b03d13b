"""Pieces shared by several resources: bounded numbers, stop lists, usage, ids."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from backends.spec import parse_keep_alive
from server.errors import InvalidRequest

# Every numeric request field is bounded; NaN and infinities are refused (hardening item 11).
MAX_TOKENS_LIMIT = 1_000_000
Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=-1, le=1_000_000)]  # -1 and 0: off (vLLM says -1, llama.cpp 0)
MinP = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
N = Annotated[int, Field(ge=1, le=16)]
StopText = Annotated[str, Field(max_length=512)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]
LogitBias = Annotated[dict[Annotated[str, Field(pattern=r"^\d{1,9}$")], Bias], Field(max_length=1024)]
# Ollama's per-request keep-alive: seconds, "5m", "1h", -1 (forever).
KeepAlive = Annotated[float | int | str | None, AfterValidator(lambda v: None if v is None else parse_keep_alive(v))]
# Token ids in a model's own vocabulary (the engine checks the upper bound, which only it knows).
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=1_000_000)]


class WireModel(BaseModel):
    """Requests: unknown fields are accepted and ignored (Zed, Continue send extras)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class RequestBody(WireModel):
    """A whole JSON request body. JSON may spell a lone surrogate ("\\ud800"), which is no Unicode
    text: engines, logs and responses would fail to encode it (a 500). Refused here with a 400
    naming the field, before any field is validated."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        where = lone_surrogate(data)
        if where is not None:
            raise InvalidRequest(f"{where} contains a lone UTF-16 surrogate, which is not valid Unicode text",
                                 param=where)
        return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any) -> str | None:
    """The dotted path of the first string (or key) in a JSON value holding a lone surrogate."""
    stack: list[tuple[str, Any]] = [("", value)]  # iterative: a deeply nested body must not recurse
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return path or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                name = str(key).encode("utf-8", "backslashreplace").decode("utf-8")  # a key may be the culprit
                where = f"{path}.{name}" if path else name
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    return where
                stack.append((where, child))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}", child) for i, child in enumerate(item))
    return None


class GenerationRequest(RequestBody):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = Field(None, description="Not OpenAI's: llama.cpp's and vLLM's extension.")
    min_p: MinP | None = Field(None, description="Not OpenAI's: llama.cpp's and vLLM's extension.")
    n: N = 1
    stream: bool = False
    stop: StopText | Annotated[list[StopText], Field(max_length=64)] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    keep_alive: KeepAlive = Field(None, description="Ollama-style: seconds or '5m'; -1 forever.")
    user: str | None = None

    def sampling(self) -> dict[str, Any]:
        """The contract's SamplingParams fields this request sets (backends/contract.py)."""
        params: dict[str, Any] = {"stop": self.stop_list()}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "min_p"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.top_k is not None:
            params["top_k"] = max(self.top_k, 0)
        return params

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class StreamOptions(WireModel):
    include_usage: bool = False


def new_id(prefix: str, separator: str = "-") -> str:
    return f"{prefix}{separator}{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
