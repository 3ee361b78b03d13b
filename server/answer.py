"""The answer to a chat request as one stream of events, whichever API asked: text as it is written
(with its logprobs), tool calls once complete, each choice's finish, then usage. The front doors
(routes/chat.py, routes/responses.py, routes/messages.py) turn these into their own wire formats.

When tools are in play the engine's text goes through the tool-call parser for the model's syntax
(server/tool_syntax.py): text still flows as it is written, wrapper characters never do, a call cut
short by max_tokens is dropped and the choice ends with "length".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

from backends.contract import TextChunk, TextResult, TokenLogprob
from backends.tools import ToolFormat
from server.generation import Generation
from server.tool_syntax import Parser, Text, ToolCall, parser_for


@dataclass(frozen=True)
class Delta:
    choice: int
    text: str
    logprobs: list[TokenLogprob] | None = None  # the tokens whose text begins here (when asked)


@dataclass(frozen=True)
class Call:
    choice: int
    call: ToolCall


@dataclass(frozen=True)
class Finish:
    choice: int
    reason: str  # stop | length | tool_calls | cancelled


Event = Delta | Call | Finish


@dataclass
class Answer:
    """Read a generation's events as answer events; `usage` is set once they are all read."""

    generation: Generation
    tool_format: ToolFormat | None  # None: no tools in play, the text is the answer
    with_logprobs: bool = False
    forced: bool = False  # tool_choice required or named: the answer is calls only, never text
    usage: tuple[int, int] = (0, 0)  # prompt, completion tokens
    _parsers: dict[int, Parser] = field(default_factory=dict)
    _pending: dict[int, list[TokenLogprob]] = field(default_factory=dict)

    async def events(self) -> AsyncIterator[Event]:
        async for index, raw in self.generation.events():
            chunk = cast(TextChunk, raw)
            for event in self._read(index, chunk["text"], chunk.get("logprobs")):
                yield event
        if self.generation.abandoned:
            return
        prompt = completion = 0
        for index, raw in enumerate(self.generation.finals()):
            final = cast(TextResult, raw)
            for event in self._finish(index, final["finish_reason"]):
                yield event
            prompt = final["usage"]["prompt_tokens"]  # every choice reads the same prompt
            completion += final["usage"]["completion_tokens"]
        self.usage = self.generation.usage = (prompt, completion)

    def _read(self, index: int, text: str, logprobs: list[TokenLogprob] | None) -> list[Event]:
        if logprobs and self.with_logprobs:
            self._pending.setdefault(index, []).extend(logprobs)
        if self.tool_format is None:
            return [self._delta(index, text)] if text or self._pending.get(index) else []
        parser = self._parsers.setdefault(index, parser_for(self.tool_format))
        return self._translate(index, parser.feed(text))

    def _finish(self, index: int, reason: str) -> list[Event]:
        parser = self._parsers.get(index)
        events = self._translate(index, parser.finish()) if parser is not None else []
        if self.forced:  # all a forced answer can leave held back is a call's opener, cut half-written
            events = [e for e in events if not isinstance(e, Delta) or not e.text]
        if self._pending.get(index):
            events.append(self._delta(index, ""))
        if parser is not None and parser.calls and reason == "stop":
            reason = "tool_calls"
        return [*events, Finish(index, reason)]

    def _translate(self, index: int, parsed: list[Text | ToolCall]) -> list[Event]:
        events: list[Event] = []
        for item in parsed:
            if isinstance(item, ToolCall):
                events.append(Call(index, item))
            elif item.text:
                events.append(self._delta(index, item.text))
        return events

    def _delta(self, index: int, text: str) -> Delta:
        logprobs = self._pending.pop(index, None) if self.with_logprobs else None
        return Delta(index, text, logprobs or ([] if self.with_logprobs else None))


async def collect(answer: Answer) -> list[tuple[str, list[ToolCall], list[TokenLogprob], str]]:
    """Every choice whole: (text, tool calls, logprobs, finish reason)."""
    texts: dict[int, list[str]] = {}
    calls: dict[int, list[ToolCall]] = {}
    logprobs: dict[int, list[TokenLogprob]] = {}
    reasons: dict[int, str] = {}
    async for event in answer.events():
        if isinstance(event, Delta):
            texts.setdefault(event.choice, []).append(event.text)
            logprobs.setdefault(event.choice, []).extend(event.logprobs or [])
        elif isinstance(event, Call):
            calls.setdefault(event.choice, []).append(event.call)
        else:
            reasons[event.choice] = event.reason
    return [("".join(texts.get(i, [])), calls.get(i, []), logprobs.get(i, []), reasons[i]) for i in sorted(reasons)]
