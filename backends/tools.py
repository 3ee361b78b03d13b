"""Tool calls in a model's own syntax, held to the tools' schemas: which syntax a template teaches,
the grammar a call must follow, and the lazy constraint that applies it.

The model writes freely until it opens a call (its syntax's trigger); from there the grammar holds
it to a call of one of the tools, arguments matching that tool's parameters, as llama.cpp's lazy
grammars do. With tool_choice "required" or a named function the grammar holds from the first
token. server/tool_syntax.py parses the same syntaxes back as the text streams.

Formats:
  hermes   <tool_call>{"name": ..., "arguments": {...}}</tool_call>     Hermes, Qwen 2.5/3 and many more
  mistral  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]        Mistral v3
           [TOOL_CALLS]name[ARGS]{...}                                Mistral v11+ (templates with [ARGS])
  llama3   {"name": ..., "parameters": {...}}, maybe after <|python_tag|>   Llama 3.1-3.3
  json     our constrained {"content"} / {"name", "arguments"} wrapper, for templates with no syntax
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from backends.contract import InvalidInput
from backends.guidance import allowed_tokens


class ToolFormat(StrEnum):
    HERMES = "hermes"
    MISTRAL = "mistral"
    LLAMA3 = "llama3"
    JSON = "json"


# models.yaml's `options.tool_format`: auto reads the chat template.
ToolFormatOption = Literal["auto", "hermes", "mistral", "llama3", "json"]


def chosen(option: str, template: str | None) -> str:
    """The syntax a model is served with: the option, else what its template teaches."""
    return str(detect(template)) if option == "auto" else option


def detect(template: str | None) -> ToolFormat:
    """The syntax a chat template teaches its model to call tools in (json: none we know)."""
    source = template or ""
    if "<tool_call>" in source:
        return ToolFormat.HERMES
    if "[TOOL_CALLS]" in source:
        return ToolFormat.MISTRAL
    if "<|python_tag|>" in source or ("ipython" in source and "parameters" in source):
        return ToolFormat.LLAMA3
    return ToolFormat.JSON


# Whitespace a model may put around a call: bounded, so a constrained model cannot pad forever.
GAP = r"/[ \t\n]{0,3}/"
# JSON written the way these models write it (spaces after , and :), and only that way.
SPACING = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class ToolGrammar:
    """A Lark grammar (llguidance's dialect) for the calls, and when it applies: from the first
    token (`trigger` None), or from the first match of `trigger` in the text, fed the text from the
    match's end (hermes, mistral) or from its last character (llama3's bare `{`). Once a call has
    begun only more calls or the end may follow, as with llama.cpp's lazy grammars."""

    lark: str
    trigger: re.Pattern[str] | None
    feed_from_start: bool = False


def grammar(fmt: ToolFormat, tools: list[dict[str, Any]], tool_choice: Any, template: str = "",
            answer_schema: dict[str, Any] | None = None) -> ToolGrammar | None:
    """The grammar for `tools` under `tool_choice` in `fmt` (None: nothing to constrain).
    tool_choice as OpenAI's: None/"auto", "required", "none", or {"type": "function", "function":
    {"name": ...}}. `answer_schema` (a json_schema response_format): an answer that is not a call
    must follow it, so the grammar holds from the first token (a call or that JSON)."""
    if not tools or tool_choice == "none" or fmt is ToolFormat.JSON:
        return None
    functions = {_function(t).get("name"): _function(t) for t in tools if _function(t).get("name")}
    forced = tool_choice == "required" or isinstance(tool_choice, dict)
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in functions:
            raise InvalidInput(f"tool_choice names the function {name!r}, which is not in tools", param="tool_choice")
        functions = {name: functions[name]}
    opener, after_opener, rules = _syntax(fmt, functions, template)
    calls = f"calls: {opener} {after_opener}"
    if forced:
        return ToolGrammar(f"start: calls\n{calls}\n{rules}", None)
    if answer_schema is not None:
        answer = "answer: %json " + json.dumps(_with_spacing(answer_schema))
        return ToolGrammar(f"start: calls | answer\n{calls}\n{answer}\n{rules}", None)
    if fmt is ToolFormat.LLAMA3:
        return ToolGrammar(f"start: {after_opener}\n{rules}", re.compile(r"\A\s*(?:<\|python_tag\|>)?\s*\{"),
                           feed_from_start=True)
    return ToolGrammar(f"start: {after_opener}\n{rules}", re.compile(re.escape(opener.strip('"'))))


def _syntax(fmt: ToolFormat, functions: dict[str, dict[str, Any]], template: str) -> tuple[str, str, str]:
    """(the opener as a Lark literal, what follows it, the rules both use)."""
    if fmt is ToolFormat.HERMES:
        call = "call: %json " + json.dumps(_call_schema(functions, "arguments"))
        block = f'{GAP} call {GAP} "</tool_call>"'
        return '"<tool_call>"', f'{block} ({GAP} "<tool_call>" {block})*', call
    if fmt is ToolFormat.MISTRAL:
        if "[ARGS]" in template:  # v11+: name[ARGS]{...} per call, each after its own [TOOL_CALLS]
            names = " | ".join(f"{json.dumps(name + '[ARGS]')} args{i}" for i, name in enumerate(functions))
            rules = "\n".join(f"args{i}: %json {json.dumps(_with_spacing(_parameters(f)))}"
                               for i, f in enumerate(functions.values()))
            return '"[TOOL_CALLS]"', 'one ("[TOOL_CALLS]" one)*', f"one: {names}\n{rules}"
        call = "call: %json " + json.dumps(_call_schema(functions, "arguments"))
        return '"[TOOL_CALLS]"', f'{GAP} "[" call (", " call)* "]"', call
    call = "call: %json " + json.dumps(_call_schema(functions, "parameters"))
    return '"<|python_tag|>"?', 'call ("; " call)*', call


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function") or {}


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    return function.get("parameters") or {"type": "object"}


def _with_spacing(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "x-guidance": SPACING}


def _call_schema(functions: dict[str, dict[str, Any]], arguments: str) -> dict[str, Any]:
    options = [{"type": "object", "properties": {"name": {"const": name}, arguments: _parameters(function)},
                "required": ["name", arguments], "additionalProperties": False}
               for name, function in functions.items()]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return _with_spacing(schema)


class ToolConstraint:
    """A ToolGrammar over one generation: no mask while the model writes text, the grammar's mask
    from the trigger on. `token_bytes` is what a sampled token adds to the text (special tokens
    spelt out, so a trigger that is one special token is seen); `new_matcher` compiles the grammar.

    If the text the trigger matched cannot begin a call (the model wrote it unconstrained, e.g.
    llama3's bare `{` opening something else), the constraint stands down and the text stays text."""

    def __init__(self, tool_grammar: ToolGrammar, tokenizer, new_matcher: Callable[[Any, str], Any],
                 token_bytes: Callable[[int], bytes], n_vocab: int):
        self._grammar = tool_grammar
        self._tokenizer = tokenizer  # llguidance's LLTokenizer for this vocabulary
        self._new_matcher = new_matcher
        self._token_bytes = token_bytes
        self._n_vocab = n_vocab
        self._text = b""  # what the model wrote before the trigger
        self._gave_up = False
        self._matcher = None if tool_grammar.trigger is not None else self._start(b"")

    @property
    def active(self) -> bool:
        return self._matcher is not None

    def allowed(self) -> np.ndarray | None:
        """Which of the first n_vocab tokens may come next (None: any)."""
        return allowed_tokens(self._matcher, self._n_vocab) if self._matcher is not None else None

    def mask(self, logits: np.ndarray) -> None:
        allowed = self.allowed()
        if allowed is not None:
            logits[: self._n_vocab][~allowed] = -np.inf

    def accept(self, token: int) -> None:
        if self._matcher is not None:
            if not self._matcher.consume_token(token):
                raise RuntimeError(f"constrained decoding failed: {self._matcher.get_error() or 'token refused'}")
            return
        if self._gave_up or self._grammar.trigger is None:
            return
        self._text += self._token_bytes(token)
        found = self._grammar.trigger.search(self._text.decode("utf-8", errors="replace"))
        if found is None:
            return
        text = self._text.decode("utf-8", errors="replace")
        rest = text[found.end() - 1 if self._grammar.feed_from_start else found.end():]
        self._matcher = self._start(rest.encode())
        if self._matcher is None:
            self._gave_up = True

    @property
    def finished(self) -> bool:
        """The grammar is complete and nothing but the end may follow."""
        return self._matcher is not None and self._matcher.is_stopped()

    def _start(self, written: bytes):
        matcher = self._new_matcher(self._tokenizer, self._grammar.lark)
        if written:
            tokens = self._tokenizer.tokenize_bytes(written)
            if matcher.try_consume_tokens(tokens) != len(tokens):
                return None
        return matcher
