"""The engine's TokenLogprob entries (backends/contract.py) in OpenAI's two shapes. Pure functions."""

from __future__ import annotations

from typing import Any


def chat_content(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat's `choices[].logprobs.content[]`: token, logprob, bytes, top_logprobs[]."""
    return [{
        "token": e["token"],
        "logprob": e["logprob"] if e.get("logprob") is not None else -9999.0,
        "bytes": e.get("bytes"),
        "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": t.get("bytes")}
                         for t in e.get("top_logprobs", [])],
    } for e in entries]


def legacy(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """/v1/completions' `{tokens, token_logprobs, top_logprobs, text_offset}`.

    top_logprobs is one {token: logprob} dict per token; alternatives that decode to the same
    text (partial UTF-8 bytes) keep the most likely one, as a dict cannot hold both.
    """
    tops = []
    for e in entries:
        alternatives: dict[str, float] = {}
        for t in e.get("top_logprobs", []):
            if t["token"] not in alternatives:
                alternatives[t["token"]] = t["logprob"]
        tops.append(alternatives)
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e.get("logprob") for e in entries],
        "top_logprobs": tops,
        "text_offset": [e.get("text_offset", 0) for e in entries],
    }

