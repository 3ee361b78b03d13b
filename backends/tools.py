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

from backends import text
from backends.contract import InvalidInput, SamplingParams
from backends.guidance import Constraint, allowed_tokens, lark_matcher, new_matcher


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


# The syntaxes' markers, which vocabularies often hold as single (special or added) tokens.
MARKERS = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>")


def special_markers(tokenizer) -> dict[str, int]:
    """Markers that are one special token in this llguidance vocabulary (added tokens count: Qwen's
    <tool_call> is one). A grammar must name those by id, or a model could only spell them out."""
    found = {}
    for marker in MARKERS:
        ids = tokenizer.tokenize_str(marker)
        if len(ids) == 1 and tokenizer.is_special_token(ids[0]):
            found[marker] = ids[0]
    return found


def grammar(fmt: ToolFormat, tools: list[dict[str, Any]], tool_choice: Any, template: str = "",
            answer_schema: dict[str, Any] | None = None, specials: dict[str, int] | None = None,
            parallel: bool = True) -> ToolGrammar | None:
    """The grammar for `tools` under `tool_choice` in `fmt` (None: nothing to constrain).
    tool_choice as OpenAI's: None/"auto", "required", "none", or {"type": "function", "function":
    {"name": ...}}. `answer_schema` (a json_schema response_format): an answer that is not a call
    must follow it, so the grammar holds from the first token (a call or that JSON). `specials`:
    markers the vocabulary holds as one special token (special_markers), by id. `parallel` False:
    one call, then the end."""
    if not tools or tool_choice == "none" or fmt is ToolFormat.JSON:
        return None
    functions = {_function(t).get("name"): _function(t) for t in tools if _function(t).get("name")}
    forced = tool_choice == "required" or isinstance(tool_choice, dict)
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in functions:
            raise InvalidInput(f"tool_choice names the function {name!r}, which is not in tools", param="tool_choice")
        functions = {name: functions[name]}
    opener, after_opener, rules = _syntax(fmt, functions, template, _Literals(specials or {}), parallel)
    calls = f"calls: {opener} {after_opener}"
    if forced:
        return ToolGrammar(f"start: calls\n{calls}\n{rules}", None)
    if answer_schema is not None:
        answer = "answer: %json " + json.dumps(_with_spacing(answer_schema))
        return ToolGrammar(f"start: calls | answer\n{calls}\n{answer}\n{rules}", None)
    if fmt is ToolFormat.LLAMA3:
        return ToolGrammar(f"start: {after_opener}\n{rules}", re.compile(r"\A\s*(?:<\|python_tag\|>)?\s*\{"),
                           feed_from_start=True)
    marker = "<tool_call>" if fmt is ToolFormat.HERMES else "[TOOL_CALLS]"
    return ToolGrammar(f"start: {after_opener}\n{rules}", re.compile(re.escape(marker)))


class _Literals:
    """A marker in Lark: the special token that stands for it where the vocabulary has one (what
    the model was trained to write; spelling it out byte by byte could be cut half-written), else
    its text."""

    def __init__(self, specials: dict[str, int]):
        self.specials = specials

    def __call__(self, marker: str) -> str:
        return f"<[{self.specials[marker]}]>" if marker in self.specials else json.dumps(marker)


def _syntax(fmt: ToolFormat, functions: dict[str, dict[str, Any]], template: str, lit: _Literals,
            parallel: bool) -> tuple[str, str, str]:
    """(the opener in Lark, what follows it, the rules both use)."""

    def more(separator: str, item: str) -> str:
        return f"({separator} {item})*" if parallel else ""

    if fmt is ToolFormat.HERMES:
        opener, closer = lit("<tool_call>"), lit("</tool_call>")
        call = "call: %json " + json.dumps(_call_schema(functions, "arguments"))
        block = f"{GAP} call {GAP} {closer}"
        return opener, f"{block} {more(f'{GAP} {opener}', block)}", call
    if fmt is ToolFormat.MISTRAL:
        opener = lit("[TOOL_CALLS]")
        if "[ARGS]" in template:  # v11+: name[ARGS]{...} per call, each after its own [TOOL_CALLS]
            names = " | ".join(f"{json.dumps(name)} {lit('[ARGS]')} args{i}" for i, name in enumerate(functions))
            rules = "\n".join(f"args{i}: %json {json.dumps(_with_spacing(_parameters(f)))}"
                               for i, f in enumerate(functions.values()))
            return opener, f"one {more(opener, 'one')}", f"one: {names}\n{rules}"
        call = "call: %json " + json.dumps(_call_schema(functions, "arguments"))
        return opener, f'{GAP} "[" call {more(json.dumps(", "), "call")} "]"', call
    call = "call: %json " + json.dumps(_call_schema(functions, "parameters"))
    return f'{lit("<|python_tag|>")}?', f"call {more(json.dumps('; '), 'call')}", call


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


def constraint_for(params: SamplingParams, tokenizer, n_vocab: int, token_bytes: Callable[[int], bytes],
                   template: str = "") -> Constraint | ToolConstraint | None:
    """What holds one generation's output: tool calls in the model's syntax (lazily, or from the
    first token), else a response_format schema, else nothing. `tokenizer`: a callable giving
    llguidance's view of the engine's vocabulary (built once per model, on first use)."""
    schema = text.json_schema(params.response_format)
    tools, fmt = getattr(params, "tools", None), getattr(params, "tool_format", None)
    if tools and fmt and fmt != ToolFormat.JSON:
        vocabulary = tokenizer()
        calls = grammar(ToolFormat(fmt), tools, getattr(params, "tool_choice", None), template, answer_schema=schema,
                        specials=special_markers(vocabulary), parallel=getattr(params, "parallel_tool_calls", True))
        if calls is not None:
            return ToolConstraint(calls, vocabulary, lark_matcher, token_bytes, n_vocab)
    if schema is not None:
        return Constraint(new_matcher(tokenizer(), schema), n_vocab)
    return None
