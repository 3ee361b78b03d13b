"""Anthropic's /v1/messages through the real app and workers, with the real `anthropic` SDK, on the
fake demo model, a GGUF model and a Hugging Face model."""

from __future__ import annotations

import anthropic
import httpx
import jsonschema
import pytest
from conftest import serve

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny_gguf
from tinymodels import hf as tiny_hf

KEY = "local-key"
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,8}$"}},
                            "required": ["city"], "additionalProperties": False}}
MODELS = ["claude-sonnet-4-6", "gguf", "hf"]  # the first is the fake demo model, by an alias


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_gguf.build(DEFAULT_ROOT)
    tiny_hf.build(DEFAULT_ROOT)
    models = [{"id": "chat", "backend": "fake", "aliases": ["claude-sonnet-4-6", "claude-haiku-4-5"]},
              {"id": "gguf", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.CHAT_FILE),
               "options": {"n_ctx": 1024}},
              {"id": "hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.LLM_DIR), "context_length": 1024}]
    with serve(tmp_path_factory.mktemp("messages"), models, api_keys=[KEY]) as served:
        yield served


@pytest.fixture(scope="module")
def client(s):
    return anthropic.Anthropic(base_url=s.base_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.mark.parametrize("model", MODELS)
def test_a_message_has_text_a_stop_reason_and_usage(client, model):
    # Greedy: a random model's sampled first token is now and then its end token, leaving no text.
    reply = client.messages.create(model=model, max_tokens=8, system=[{"type": "text", "text": "Be brief."}],
                                   messages=[{"role": "user", "content": "Say something"}], extra_body={"temperature": 0})
    assert reply.type == "message" and reply.role == "assistant" and reply.model == model
    assert reply.content[0].type == "text" and reply.content[0].text
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert 0 < reply.usage.output_tokens <= 8 and reply.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_a_stream_sends_text_deltas_and_a_final_message(client, model):
    with client.messages.stream(model=model, max_tokens=8, messages=[{"role": "user", "content": "Stream"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(texts) > 1 and "".join(texts) == final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens") and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_round_trip(client, model):
    question = [{"role": "user", "content": "Weather in Lisbon?"}]
    first = client.messages.create(model=model, max_tokens=120, tools=[WEATHER], messages=question,
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["input_schema"])
    second = client.messages.create(model=model, max_tokens=6, tools=[WEATHER], messages=[
        *question, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]}])
    assert second.usage.input_tokens > first.usage.input_tokens


def test_a_streamed_tool_call_arrives_as_input_json(client):
    with client.messages.stream(model="chat", max_tokens=100, tools=[WEATHER],
                                messages=[{"role": "user", "content": "Weather in Lisbon?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    jsonschema.validate(final.content[-1].input, WEATHER["input_schema"])


@pytest.mark.parametrize("model", ["chat", "gguf", "hf"])
def test_count_tokens_counts_what_a_message_would_read(client, model):
    messages = [{"role": "user", "content": "the quick brown fox"}]
    counted = client.messages.count_tokens(model=model, messages=messages)
    read = client.messages.create(model=model, max_tokens=1, messages=messages)
    assert counted.input_tokens == read.usage.input_tokens
    with_tools = client.messages.count_tokens(model=model, messages=messages, tools=[WEATHER])
    assert with_tools.input_tokens >= counted.input_tokens


def test_errors_come_in_anthropics_envelope(s, client):
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError) as unknown:
        anthropic.Anthropic(base_url=s.base_url, api_key="wrong", max_retries=0).messages.create(
            model="chat", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["error"]["type"] == "authentication_error"
    response = httpx.post(s.base_url + "/v1/messages", headers={"x-api-key": KEY}, json={"model": "chat", "messages": []})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as image:
        client.messages.create(model="gguf", max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    assert image.value.body["error"]["type"] == "invalid_request_error"


def test_the_openai_routes_keep_their_own_envelope(s):
    response = s.http.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                           headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
