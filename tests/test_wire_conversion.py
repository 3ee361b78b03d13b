"""The pure conversions between OpenAI's tools/logprobs shapes and what engines produce."""

from __future__ import annotations

import jsonschema
import pytest

from server.protocol import logprobs, tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def test_no_tools_or_choice_none_means_no_constraint():
    assert tools.plan(None, "auto").schema is None
    assert tools.plan([WEATHER], "none").schema is None


def test_required_with_one_tool_constrains_to_that_call():
    plan = tools.plan([WEATHER], "required")
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Oslo"}}, plan.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"content": "hi"}, plan.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "arguments": {}}, plan.schema)


def test_named_choice_allows_only_that_function():
    plan = tools.plan([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}})
    jsonschema.validate({"name": "get_time", "arguments": {}}, plan.schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "arguments": {"city": "x"}}, plan.schema)


def test_named_choice_not_in_tools_is_refused():
    with pytest.raises(ValueError, match="nope"):
        tools.plan([WEATHER], {"type": "function", "function": {"name": "nope"}})


def test_auto_allows_any_call_or_a_message():
    plan = tools.plan([WEATHER, TIME], "auto")
    for value in ({"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "a"}},
                  {"content": "no tool needed"}):
        jsonschema.validate(value, plan.schema)
    assert plan.allow_message and tools.plan([WEATHER], None).allow_message


ENTRIES = [
    {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "text_offset": 0,
     "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}, {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}]},
    {"token": "\ufffd", "logprob": -2.0, "bytes": [226], "text_offset": 2,
     "top_logprobs": [{"token": "\ufffd", "logprob": -1.0, "bytes": [226]}, {"token": "\ufffd", "logprob": -2.0, "bytes": [227]}]},
]


def test_chat_logprobs_shape():
    content = logprobs.chat_content(ENTRIES)
    assert content[0] == {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}, {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}]}


def test_legacy_logprobs_shape_keeps_the_likelier_of_same_text_alternatives():
    legacy = logprobs.legacy(ENTRIES)
    assert legacy == {"tokens": ["Hi", "\ufffd"], "token_logprobs": [-0.5, -2.0],
                      "top_logprobs": [{"Hi": -0.5, "Yo": -1.5}, {"\ufffd": -1.0}], "text_offset": [0, 2]}
