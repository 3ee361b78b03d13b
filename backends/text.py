"""What the text engines share: the chat-template sandbox, stop strings, logit bias, the JSON
constraint a response_format asks for, and the refusals they word alike."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from typing import Any

from backends import schema_limits
from backends.contract import ErrorCode, InvalidInput, ResponseFormat

# Used when a model has no chat template and models.yaml gives none (base models).
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class StopMatcher:
    """Finds stop strings in streamed text, holding back a tail that might begin one.

    feed() returns the text that is safe to emit and whether a stop string was hit.
    """

    def __init__(self, stops: Sequence[str]):
        self._stops = [s for s in stops if s]
        self._held = ""
        self._keep = max((len(s) for s in self._stops), default=1) - 1

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        cut = len(buffer) - self._keep if self._keep else len(buffer)
        # Hold back only a tail that is a prefix of some stop string.
        while cut < len(buffer) and not any(s.startswith(buffer[cut:]) for s in self._stops):
            cut += 1
        self._held = buffer[cut:]
        return buffer[:cut], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


# ---- chat templates ------------------------------------------------------------------------------


class ChatTemplate:
    """A model's chat template, rendered in jinja2's immutable sandbox.

    A template comes with a downloaded model and must not reach Python objects (llama-cpp-python's
    CVE-2024-34359 was template injection). The environment mirrors what transformers gives
    templates: loop controls, an HTML-unescaped tojson, raise_exception and strftime_now.
    """

    def __init__(self, source: str | dict[str, str] | None):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if isinstance(source, dict):  # named templates: take the default one
            source = source.get("default") or next(iter(source.values()))
        self.source = source or FALLBACK_TEMPLATE
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._template = env.from_string(self.source)
        except TemplateError as exc:
            raise InvalidInput(f"the model's chat template does not compile: {exc}", param="model") from None
        # A vision processor's template walks content parts itself ({"type": "image"} among them).
        self.reads_parts = bool(_READS_IMAGE_PARTS.search(self.source))

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               image_marker: str | None = None, **special_tokens: str) -> str:
        """The prompt for these messages, ending where the assistant's answer begins. Images
        (contract ImageParts) reach a template that reads parts as {"type": "image"} parts; any
        other template sees `image_marker` where each was (a text model refuses them)."""
        if self.reads_parts and image_marker is not None:
            messages = [_as_parts(m) for m in messages]
        else:
            messages = [_plain(m, image_marker) for m in messages]
        if tools and "tools" not in self.source:
            # A template that knows nothing of tools must still show them to the model.
            messages = [{"role": "system", "content": "You may call these tools: " + json.dumps(tools)}, *messages]
        try:
            return self._template.render(messages=messages, tools=tools, add_generation_prompt=True,
                                         **special_tokens)
        except InvalidInput:
            raise
        except Exception as exc:  # the template refused these messages (roles out of order, the sandbox)
            raise InvalidInput(f"the chat template could not render these messages: {exc}",
                               param="messages") from None


_READS_IMAGE_PARTS = re.compile(r"""['"]image['"]""")


def _plain(message: dict[str, Any], image_marker: str | None = None) -> dict[str, Any]:
    """Content parts flattened to text, each image as `image_marker` on its own line; without a
    marker (a text model) any part but text is refused."""
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image" and image_marker is not None:
                parts.append(image_marker + "\n")
            elif kind == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise InvalidInput("this model accepts only text content parts", param="messages")
        return {**message, "content": "".join(parts)}
    if content is None:
        return {**message, "content": ""}
    return message


def _as_parts(message: dict[str, Any]) -> dict[str, Any]:
    """Content as the parts list a vision processor's template walks (as transformers hands it one)."""
    content = message.get("content")
    if isinstance(content, list):
        parts = [{"type": "image"} if isinstance(p, dict) and p.get("type") == "image" else
                 {"type": "text", "text": str(p.get("text", ""))} for p in content if isinstance(p, dict)]
    else:
        parts = [{"type": "text", "text": content}] if content else []
    return {**message, "content": parts}


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    # transformers' own filter: no HTML escaping (jinja2's built-in would turn < into \u003c)
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise InvalidInput(f"the chat template refused the messages: {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


# ---- request checks ------------------------------------------------------------------------------


def logit_bias(bias: dict[str, float], n_vocab: int) -> dict[int, float]:
    """OpenAI's {"token id": bias} checked against the vocabulary, as additive logits.

    -100 and 100 mean ban and force in OpenAI's API; as raw additive logits they would merely
    nudge a confident model, so they become -inf and a decisive +1e4.
    """
    out = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise InvalidInput(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
        if not 0 <= token < n_vocab:
            raise InvalidInput(f"logit_bias token {token} is outside the vocabulary (0..{n_vocab - 1})",
                               param="logit_bias")
        out[token] = float("-inf") if value <= -100 else (1e4 if value >= 100 else float(value))
    return out


def json_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema the output must follow, or None for free text."""
    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise InvalidInput(f"response_format type {kind!r} is not supported", param="response_format")
    schema = response_format.get("schema") or {"type": "object"}
    if not isinstance(schema, dict):
        raise InvalidInput("response_format.json_schema.schema must be an object", param="response_format")
    try:
        schema_limits.check(schema, "response_format.json_schema.schema")
    except schema_limits.SchemaTooComplex as exc:
        raise InvalidInput(str(exc), param=exc.path) from None
    return schema


def check_context(count: int, limit: int, param: str, what: str = "the prompt", room: int = 1) -> None:
    """Refuse input that leaves fewer than `room` tokens of the context (a prompt needs one to answer in)."""
    if count + room > limit:
        raise InvalidInput(f"This model's maximum context length is {limit} tokens; {what} has {count}.",
                           param=param, code=ErrorCode.CONTEXT_LENGTH_EXCEEDED)


def check_token_ids(ids: list[int], n_vocab: int, param: str, where: str | None = None) -> list[int]:
    """Token ids a client sent, each inside the model's own vocabulary; `where` names the list in the
    request (e.g. "input[2]") when there are several."""
    for position, token in enumerate(ids):
        if not 0 <= token < n_vocab:
            raise InvalidInput(f"{where or param}[{position}]: token id {token} is outside this model's "
                               f"vocabulary (0..{n_vocab - 1})", param=param)
    return ids


def check_bytes(prompt: str, limit: int, longest_token_bytes: int, param: str, what: str = "the prompt") -> None:
    """Refuse, before tokenizing it, text too long for `limit` tokens even if every token were the
    vocabulary's longest: tokenizing 4 MB costs minutes on some vocabularies, refusing it nothing."""
    cap = limit * longest_token_bytes
    if len(prompt) > cap or len(prompt.encode("utf-8", "surrogatepass")) > cap:  # characters <= bytes
        raise InvalidInput(f"This model's maximum context length is {limit} tokens; {what} is longer than "
                           f"{limit} tokens can be ({cap} bytes at most).", param=param,
                           code=ErrorCode.CONTEXT_LENGTH_EXCEEDED)


def no_fill_in_the_middle(model_id: str) -> InvalidInput:
    return InvalidInput(f"model {model_id} has no fill-in-the-middle tokens; `suffix` is not supported",
                        param="suffix", code=ErrorCode.UNSUPPORTED_PARAMETER)


def unsupported(model_id: str, what: str) -> InvalidInput:
    return InvalidInput(f"model {model_id} {what}", param="model", code=ErrorCode.UNSUPPORTED_CAPABILITY)
