"""The fake engine behind demo-chat honours what clients ask of a chat model, deterministically: it is
the first model a newcomer tries, through the real app and the openai client."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import serve
from pydantic import BaseModel

MODELS = [{"id": "demo-chat", "backend": "fake", "aliases": ["gpt-4o-mini"]}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"]}}}
ASK = [{"role": "user", "content": "What is the weather in Lisbon?"}]


class Forecast(BaseModel):
    city: str
    days: int
    sunny: bool


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("demo"), MODELS) as served:
        yield served.client()


def test_an_answer_without_max_tokens_is_short_and_ends_by_itself(client):
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
    assert reply.choices[0].finish_reason == "stop"
    assert 0 < reply.usage.completion_tokens <= 12 and reply.choices[0].message.content


def test_a_json_schema_response_format_gets_a_valid_instance(client):
    parsed = client.chat.completions.parse(model="demo-chat", messages=ASK, response_format=Forecast)
    assert isinstance(parsed.choices[0].message.parsed, Forecast)
    plain = client.chat.completions.create(model="demo-chat", messages=ASK, response_format={"type": "json_object"})
    assert isinstance(json.loads(plain.choices[0].message.content), dict)


def test_tools_get_a_call_and_the_tools_result_gets_an_answer(client):
    first = client.chat.completions.create(model="demo-chat", messages=ASK, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}]
    second = client.chat.completions.create(model="demo-chat", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_a_named_tool_choice_is_called(client):
    reply = client.chat.completions.create(model="demo-chat", messages=ASK, tools=[WEATHER],
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_logprobs_describe_each_token_of_the_answer(client):
    reply = client.chat.completions.create(model="demo-chat", messages=ASK, max_tokens=6, logprobs=True,
                                           top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == 6 == reply.usage.completion_tokens
    assert b"".join(bytes(e.bytes) for e in entries).decode() == reply.choices[0].message.content
    assert all(len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token for e in entries)


def test_completions_echo_suffix_and_legacy_logprobs(client):
    reply = client.completions.create(model="demo-chat", prompt="the quick brown", max_tokens=3, echo=True,
                                      logprobs=2)
    assert reply.choices[0].text.startswith("the quick brown")
    assert reply.choices[0].logprobs.token_logprobs[0] is None and len(reply.choices[0].logprobs.tokens) == 6
    filled = client.completions.create(model="demo-chat", prompt="def add(a, b):", suffix="return a + b", max_tokens=3)
    assert filled.choices[0].finish_reason == "length" and filled.choices[0].text


def test_its_vocabulary_tokenizes(client):
    import httpx

    base = str(client.base_url).removesuffix("/v1/")
    body = httpx.post(f"{base}/tokenize", json={"model": "demo-chat", "prompt": "the quick zebra"}).json()
    assert body["tokens"] == [0, 1, 25]
    assert httpx.post(f"{base}/detokenize", json={"model": "demo-chat", "tokens": [0, 1, 25]}).json()["prompt"] \
        == "the quick <unk>"


def test_with_tools_offered_an_answer_streams_while_it_is_written(client):
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'}]
    chunks = list(client.chat.completions.create(model="demo-chat", messages=history, tools=[WEATHER], stream=True))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1 and not any(mark in "".join(content) for mark in ('{"', '"content"'))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_cut_answer_with_tools_offered_keeps_its_text_and_no_wrapper(client):
    history = [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "{}"}]
    reply = client.chat.completions.create(model="demo-chat", messages=history, tools=[WEATHER], max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    assert "{" not in reply.choices[0].message.content and '"' not in reply.choices[0].message.content
