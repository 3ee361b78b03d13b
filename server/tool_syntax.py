"""The tool-call syntaxes models write, parsed as the text streams.

A parser is fed the engine's text as it arrives and answers events: plain text to send as it is
written, and tool calls, each sent once it is complete. Text that could be the start of a call's
opener is held back until it is ruled out, so no wrapper character ever reaches a client; a call cut
short (max_tokens) is dropped, never sent as text.

Formats (backends/tools.py holds them to the tools' schemas while they are written):
  hermes   <tool_call>{"name": ..., "arguments": {...}}</tool_call>       Hermes, Qwen 2.5/3, many others
  mistral  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]          Mistral v3
           [TOOL_CALLS]name[ARGS]{...}                                  Mistral v11+ (Magistral, Devstral)
  llama3   {"name": ..., "parameters": {...}} (maybe after <|python_tag|>) Llama 3.1-3.3 JSON tool calling
  json     {"content": "..."} or {"name": ..., "arguments": {...}}       our constrained fallback for
                                                                         templates with no tool syntax
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from backends.tools import ToolFormat


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolCall:
    index: int  # 0, 1, ... within the answer
    id: str
    name: str
    arguments: str  # a JSON object, as text

    @classmethod
    def of(cls, index: int, name: str, arguments: Any) -> ToolCall:
        encoded = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return cls(index, f"call_{uuid.uuid4().hex[:24]}", name, encoded)


Event = Text | ToolCall


class Parser:
    """Feed text, get events; finish() says whether a call was cut short (and flushes held text)."""

    def __init__(self) -> None:
        self.calls = 0
        self.cut_call = False  # generation ended inside a call: it was dropped

    def feed(self, text: str) -> list[Event]:
        raise NotImplementedError

    def finish(self) -> list[Event]:
        raise NotImplementedError

    def _call(self, name: Any, arguments: Any) -> list[Event]:
        if not isinstance(name, str) or not name:
            return []
        call = ToolCall.of(self.calls, name, arguments if arguments is not None else {})
        self.calls += 1
        return [call]


def _held_prefix(buffer: str, marker: str) -> int:
    """Where a tail of `buffer` that could begin `marker` starts (len(buffer) when none does)."""
    for start in range(max(0, len(buffer) - len(marker) + 1), len(buffer)):
        if marker.startswith(buffer[start:]):
            return start
    return len(buffer)


def _json_end(text: str, start: int) -> int | None:
    """Index just past the JSON object or array beginning at `start`, or None while incomplete."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class DelimitedParser(Parser):
    """Calls between an opener and a closer (hermes), or after an opener to the end (mistral)."""

    def __init__(self, opener: str, closer: str | None):
        super().__init__()
        self.opener, self.closer = opener, closer
        self.buffer = ""
        self.inside = False

    def feed(self, text: str) -> list[Event]:
        self.buffer += text
        events: list[Event] = []
        while True:
            if not self.inside:
                at = self.buffer.find(self.opener)
                if at < 0:
                    keep = _held_prefix(self.buffer, self.opener)
                    if keep:
                        events.append(Text(self.buffer[:keep]))
                    self.buffer = self.buffer[keep:]
                    return events
                if at:
                    events.append(Text(self.buffer[:at]))
                self.buffer, self.inside = self.buffer[at + len(self.opener):], True
            body = self._complete_body()
            if body is None:
                return events
            events.extend(self._calls(body))

    def _complete_body(self) -> str | None:
        if self.closer is None:  # a JSON array is complete when it closes; other forms run to the end
            rest = self.buffer.lstrip()
            end = _json_end(rest, 0) if rest.startswith("[") else None
            if end is None:
                return None
            body, self.buffer, self.inside = rest[:end], rest[end:], False
            return body
        at = self.buffer.find(self.closer)
        if at < 0:
            return None
        body, self.buffer, self.inside = self.buffer[:at], self.buffer[at + len(self.closer):], False
        return body

    def finish(self) -> list[Event]:
        if not self.inside:
            held, self.buffer = self.buffer, ""
            return [Text(held)] if held else []
        body, self.buffer = self.buffer, ""
        if self.closer is None and body.strip():  # the calls ran to the end of generation
            events = [e for e in self._calls(body) if isinstance(e, ToolCall)]
            self.cut_call = not events
            return events
        self.cut_call = bool(body.strip()) or self.closer is not None
        return []

    def _calls(self, body: str) -> list[Event]:
        try:
            value = json.loads(body)
        except ValueError:
            return [Text(self.opener + body + (self.closer or ""))]  # not a call after all: show what it wrote
        items = value if isinstance(value, list) else [value]
        events: list[Event] = []
        for item in items:
            if isinstance(item, dict):
                events.extend(self._call(item.get("name"), item.get("arguments", item.get("parameters"))))
        return events


class MistralParser(DelimitedParser):
    """[TOOL_CALLS] then a JSON array (v3), or name[ARGS]{...} per call (v11+)."""

    def __init__(self) -> None:
        super().__init__("[TOOL_CALLS]", None)

    def _calls(self, body: str) -> list[Event]:
        if "[ARGS]" not in body:
            return super()._calls(body)
        events: list[Event] = []
        for part in body.split(self.opener):
            name, _, arguments = part.partition("[ARGS]")
            try:
                events.extend(self._call(name.strip(), json.loads(arguments)))
            except ValueError:
                continue
        return events


class Llama3Parser(Parser):
    """Llama 3's JSON calls: an answer that starts with an object (or <|python_tag|>) is calls."""

    TAG = "<|python_tag|>"

    def __init__(self) -> None:
        super().__init__()
        self.buffer = ""
        self.mode: str | None = None  # None until the first characters decide: "text" or "calls"

    def feed(self, text: str) -> list[Event]:
        self.buffer += text
        if self.mode is None:
            head = self.buffer.lstrip()
            if not head or (self.TAG.startswith(head) and head != self.TAG):
                return []  # cannot tell yet
            self.mode = "calls" if head.startswith(("{", self.TAG)) else "text"
            if self.mode == "calls":
                self.buffer = head.removeprefix(self.TAG)
        if self.mode == "text":
            out, self.buffer = self.buffer, ""
            return [Text(out)]
        return self._complete_calls()

    def _complete_calls(self) -> list[Event]:
        events: list[Event] = []
        while True:
            rest = self.buffer.lstrip().lstrip(";").lstrip()
            if not rest.startswith("{"):
                self.buffer = rest
                return events
            end = _json_end(rest, 0)
            if end is None:
                self.buffer = rest
                return events
            try:
                item = json.loads(rest[:end])
                events.extend(self._call(item.get("name"), item.get("parameters", item.get("arguments"))))
            except ValueError:
                pass
            self.buffer = rest[end:]

    def finish(self) -> list[Event]:
        if self.mode == "calls":
            events = self._complete_calls()
            self.cut_call = bool(self.buffer.strip())
            return events
        held, self.buffer = self.buffer, ""
        return [Text(held)] if held else []


class JsonParser(Parser):
    """Our constrained wrapper: {"content": "..."} streams its string as text while it is written;
    {"name": ..., "arguments": ...} is a call, sent once complete."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = ""
        self.mode: str | None = None  # "content" once inside the content string, "call", or "done"
        self.position = 0  # in content mode: the next character of the string to decode

    def feed(self, text: str) -> list[Event]:
        self.buffer += text
        if self.mode is None:
            self._decide()
        if self.mode == "content":
            return self._content()
        if self.mode == "call":
            end = _json_end(self.buffer.lstrip(), 0)
            if end is not None:
                self.mode = "done"
                return self._parsed(self.buffer.lstrip()[:end])
        return []

    def _decide(self) -> None:
        head = self.buffer.lstrip()
        if not head.startswith("{"):
            return
        inner = head[1:].lstrip()
        if inner.startswith('"content"'):
            after = inner[len('"content"'):].lstrip()
            if after.startswith(":") and after[1:].lstrip().startswith('"'):
                value = after[1:].lstrip()
                self.buffer, self.position, self.mode = value, 1, "content"
        elif inner.startswith('"') and len(inner) > len('"content"'):
            self.mode = "call"

    def _content(self) -> list[Event]:
        out, i, buffer = [], self.position, self.buffer
        while i < len(buffer):
            c = buffer[i]
            if c == '"':
                self.mode = "done"
                i += 1
                break
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= len(buffer):
                break  # an escape split across chunks: wait for the rest
            if buffer[i + 1] == "u":
                decoded = _unicode_escape(buffer, i)
                if decoded is None:
                    break
                text, width = decoded
                out.append(text)
                i += width
                continue
            out.append(json.loads(f'"{buffer[i:i + 2]}"'))
            i += 2
        self.position = i
        return [Text("".join(out))] if out else []

    def _parsed(self, document: str) -> list[Event]:
        try:
            value = json.loads(document)
        except ValueError:
            return []
        if isinstance(value, dict) and "name" in value:
            return self._call(value.get("name"), value.get("arguments"))
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            return [Text(value["content"])]
        return []

    def finish(self) -> list[Event]:
        if self.mode == "call":
            self.cut_call = True
        elif self.mode is None and self.buffer.strip():
            self.cut_call = True  # cut before it said what it was: nothing of the wrapper is shown
        return []


def _unicode_escape(buffer: str, i: int) -> tuple[str, int] | None:
    """A \\uXXXX escape at i (with its low surrogate when it is a high one): (text, width), or None
    while incomplete."""
    if i + 6 > len(buffer):
        return None
    code = int(buffer[i + 2:i + 6], 16)
    if 0xD800 <= code < 0xDC00:
        if i + 12 > len(buffer):
            return None
        if buffer[i + 6:i + 8] == "\\u":
            return json.loads(f'"{buffer[i:i + 12]}"'), 12
    return chr(code) if not 0xD800 <= code < 0xE000 else "\ufffd", 6


def parser_for(fmt: ToolFormat) -> Parser:
    if fmt is ToolFormat.HERMES:
        return DelimitedParser("<tool_call>", "</tool_call>")
    if fmt is ToolFormat.MISTRAL:
        return MistralParser()
    if fmt is ToolFormat.LLAMA3:
        return Llama3Parser()
    return JsonParser()
