"""Tool-call syntaxes parsed as text streams in: text flows as written, calls arrive whole, wrapper
characters never leak, a cut call is dropped. Every case is fed one character at a time and whole."""

from __future__ import annotations

import json

import pytest

from backends.tools import ToolFormat, detect
from server.tool_syntax import Text, ToolCall, parser_for


def run(fmt: ToolFormat, output: str, by_char: bool) -> tuple[str, list[ToolCall], bool, int]:
    """(text shown, calls, whether a call was cut, how many text events came before the end)."""
    parser = parser_for(fmt)
    events = []
    for piece in (list(output) if by_char else [output]):
        events.extend(parser.feed(piece))
    streamed = sum(isinstance(e, Text) and bool(e.text) for e in events)
    events.extend(parser.finish())
    text = "".join(e.text for e in events if isinstance(e, Text))
    return text, [e for e in events if isinstance(e, ToolCall)], parser.cut_call, streamed


CASES = [
    (ToolFormat.HERMES, 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>',
     "Let me look.\n", [("get_weather", {"city": "Lisbon"})]),
    (ToolFormat.HERMES, '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {"x": 1}}'
                        "</tool_call>", "", [("a", {}), ("b", {"x": 1})]),
    (ToolFormat.HERMES, "1 < 2 and <tool is a word", "1 < 2 and <tool is a word", []),
    (ToolFormat.MISTRAL, 'Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', "Sure.",
     [("get_weather", {"city": "Paris"})]),
    (ToolFormat.MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time[ARGS]{}', "",
     [("get_weather", {"city": "Oslo"}), ("get_time", {})]),
    (ToolFormat.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Rome"}}', "",
     [("get_weather", {"city": "Rome"})]),
    (ToolFormat.LLAMA3, '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"q": "x"}}', "",
     [("a", {}), ("b", {"q": "x"})]),
    (ToolFormat.LLAMA3, "It is sunny {maybe}.", "It is sunny {maybe}.", []),
    (ToolFormat.JSON, '{"content": "Hello \\"world\\" \\u00e9\\ud83d\\ude00\\nbye"}', 'Hello "world" é😀\nbye', []),
    (ToolFormat.JSON, '{ "name" : "read_file", "arguments" : {"path": "/tmp/x"} }', "",
     [("read_file", {"path": "/tmp/x"})]),
]


@pytest.mark.parametrize("by_char", [True, False])
@pytest.mark.parametrize(("fmt", "output", "text", "calls"), CASES)
def test_text_and_calls_come_apart(fmt, output, text, calls, by_char):
    shown, parsed, cut, _ = run(fmt, output, by_char)
    assert shown == text and not cut
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    assert [c.index for c in parsed] == list(range(len(calls)))
    assert all(c.id.startswith("call_") for c in parsed)


@pytest.mark.parametrize(("fmt", "output", "text"), [
    (ToolFormat.HERMES, 'Checking.<tool_call>{"name": "get_weather", "argu', "Checking."),
    (ToolFormat.MISTRAL, '[TOOL_CALLS][{"name": "get_wea', ""),
    (ToolFormat.LLAMA3, '{"name": "get_weather", "param', ""),
    (ToolFormat.JSON, '{ "name" :"read_file", "argu', ""),
    (ToolFormat.JSON, '{"conte', ""),
])
def test_a_call_cut_short_is_dropped_and_no_wrapper_leaks(fmt, output, text):
    shown, parsed, cut, _ = run(fmt, output, by_char=True)
    assert shown == text and parsed == [] and cut


def test_a_cut_json_content_answer_keeps_the_text_written_so_far():
    shown, parsed, cut, _ = run(ToolFormat.JSON, '{"content":" capa', by_char=True)
    assert shown == " capa" and parsed == [] and not cut


@pytest.mark.parametrize("fmt", [ToolFormat.HERMES, ToolFormat.MISTRAL, ToolFormat.LLAMA3, ToolFormat.JSON])
def test_plain_text_streams_while_it_is_written(fmt):
    output = "The answer is forty two, and here is why it is so." if fmt is not ToolFormat.JSON else \
        '{"content": "The answer is forty two, and here is why it is so."}'
    _, _, _, streamed = run(fmt, output, by_char=True)
    assert streamed > 10  # not one chunk at the end


@pytest.mark.parametrize(("template", "fmt"), [
    ("{% if tools %}<tools>{{ tools | tojson }}</tools> reply with <tool_call>{...}</tool_call>{% endif %}",
     ToolFormat.HERMES),
    ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% if m.tool_calls %}[TOOL_CALLS]{% endif %}", ToolFormat.MISTRAL),
    ("{{- '<|start_header_id|>ipython<|end_header_id|>' }} respond with parameters", ToolFormat.LLAMA3),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", ToolFormat.JSON),
    (None, ToolFormat.JSON),
])
def test_the_template_says_which_syntax_its_model_writes(template, fmt):
    assert detect(template) is fmt
