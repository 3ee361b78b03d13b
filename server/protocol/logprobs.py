"""The engine's TokenLogprob entries (backends/contract.py) in OpenAI's two shapes. Pure functions."""

from __future__ import annotations

from typing import Any

from backends.contract import TokenLogprob


def chat_content(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Chat's `choices[].logprobs.content[]`: token, logprob, bytes, top_logprobs[]."""
    return [{
        "token": e["token"],
        "logprob": e["logprob"] if e["logprob"] is not None else -9999.0,
        "bytes": e["bytes"],
        "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]}
                         for t in e["top_logprobs"]],
    } for e in entries]


def legacy(entries: list[TokenLogprob]) -> dict[str, Any]:
    """/v1/completions' `{tokens, token_logprobs, top_logprobs, text_offset}`.

    top_logprobs is one {token: logprob} dict per token; alternatives that decode to the same
    text (partial UTF-8 bytes) keep the most likely one, as a dict cannot hold both.
    """
    tops = []
    for e in entries:
        alternatives: dict[str, float] = {}
        for t in e["top_logprobs"]:
            if t["token"] not in alternatives:
                alternatives[t["token"]] = t["logprob"]
        tops.append(alternatives)
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": tops,
        "text_offset": [e["text_offset"] for e in entries],
    }

