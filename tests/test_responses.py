"""/v1/responses through the real app and workers, with the openai client and a Codex-shaped request,
on the fake demo model, a GGUF model and a Hugging Face model."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from conftest import serve
from pydantic import BaseModel, Field

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny_gguf
from tinymodels import hf as tiny_hf

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,8}$"}},
                          "required": ["city"], "additionalProperties": False}}
NO_EOS = {"2": -100, "4": -100}  # </s> and <|im_end|> in both tiny tokenizers: exact token counts
MODELS = ["chat", "gguf", "hf"]


class Forecast(BaseModel):
    city: str = Field(max_length=8)  # bounded, so a random model's answer ends well within max_output_tokens
    sunny: bool


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_gguf.build(DEFAULT_ROOT)
    tiny_hf.build(DEFAULT_ROOT)
    models = [{"id": "chat", "backend": "fake", "aliases": ["gpt-5-codex"]},
              {"id": "gguf", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.CHAT_FILE),
               "options": {"n_ctx": 1024}},
              {"id": "hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.LLM_DIR), "context_length": 1024}]
    with serve(tmp_path_factory.mktemp("responses"), models) as served:
        yield served


def extra(model: str) -> dict:
    return {} if model == "chat" else {"extra_body": {"seed": 4}}


@pytest.mark.parametrize("model", MODELS)
def test_a_response_has_text_output_and_usage(s, model):
    reply = s.client().responses.create(model=model, input="Say something", instructions="Be brief.",
                                        max_output_tokens=8, **extra(model))
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.status in ("completed", "incomplete") and reply.output[0].type == "message"
    assert reply.output_text and reply.usage.output_tokens <= 8 and reply.usage.input_tokens > 0
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_streamed_events_come_in_the_order_clients_parse(s, model):
    # 16 tokens: a reader that falls behind gets the chunks waiting for it merged (at most 4 in one), so
    # a short stream on a busy machine could come as one delta
    events = list(s.client().responses.create(model=model, input="Stream it", max_output_tokens=16, stream=True,
                                              **extra(model)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == events[-1].response.output_text


def test_the_stream_helper_assembles_a_completed_response(s):
    with s.client().responses.stream(model="chat", input="Stream it") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and "".join(texts) == final.output_text


@pytest.mark.parametrize("model", MODELS)
def test_a_function_call_round_trip(s, model):
    client = s.client()
    first = client.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER], tool_choice="required",
                                    max_output_tokens=120, store=True, **extra(model))
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    second = client.responses.create(model=model, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=6,
                                     input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                             "output": '{"sky": "clear"}'}], **extra(model))
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its output went back in


def test_responses_parse_gives_a_pydantic_object(s):
    parsed = s.client().responses.parse(model="chat", input="Forecast please", text_format=Forecast)
    assert isinstance(parsed.output_parsed, Forecast)


@pytest.mark.parametrize("model", ["gguf", "hf"])
def test_a_json_schema_text_format_holds_on_real_engines(s, model):
    parsed = s.client().responses.parse(model=model, input="Forecast please", text_format=Forecast,
                                        max_output_tokens=120, extra_body={"seed": 3})
    assert isinstance(parsed.output_parsed, Forecast)


def test_stored_responses_are_retrieved_and_deleted(s):
    client = s.client()
    kept = client.responses.create(model="chat", input="Keep this", store=True)
    assert client.responses.retrieve(kept.id).output_text == kept.output_text
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    fleeting = client.responses.create(model="chat", input="Stateless by default")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(fleeting.id)


def test_an_unknown_previous_response_is_a_400_naming_it(s):
    with pytest.raises(openai.BadRequestError) as refused:
        s.client().responses.create(model="chat", input="x", previous_response_id="resp_nope")
    assert refused.value.code == "previous_response_not_found" and refused.value.param == "previous_response_id"


def test_a_codex_shaped_request_is_served(s):
    """What Codex CLI sends: long instructions, full history with reasoning items and earlier calls,
    hosted-tool types it cannot expect us to run, a one-token probe, a stream."""
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list the files"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell",
         "arguments": '{"command": ["ls"]}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "README.md\nsrc"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two entries."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "now read README.md"}]},
    ]
    tools = [{"type": "function", "name": "shell", "description": "Run a command", "strict": False,
              "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                             "required": ["command"], "additionalProperties": False}},
             {"type": "local_shell"}, {"type": "web_search"},
             {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark", "definition": "x"}}]
    body = {"model": "gpt-5-codex", "instructions": "You are a coding agent. " * 200, "input": history,
            "tools": tools, "tool_choice": "auto", "parallel_tool_calls": False, "store": False, "stream": True,
            "reasoning": {"effort": "medium", "summary": "auto"}, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "abc", "text": {"verbosity": "low"}}
    probe = s.http.post("/v1/responses", json={**body, "stream": False, "max_output_tokens": 1})
    assert probe.status_code == 200 and probe.json()["status"] == "incomplete"
    with s.http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    calls = [i for i in events[-1]["response"]["output"] if i["type"] == "function_call"]
    assert calls and calls[0]["name"] == "shell"  # the fake calls the one function it was offered


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"type": "message", "role": "wizard", "content": "x"}]}, "input"),
    ({"input": [{"type": "message", "role": "user", "content": [{"type": "input_audio"}]}]}, "input"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": 9}, "temperature"),
    ({"tool_choice": {"type": "function", "name": "absent"}, "tools": [WEATHER]}, "tool_choice"),
])
def test_bad_requests_are_a_400_naming_the_field(s, body, param):
    response = s.http.post("/v1/responses", json={"model": "chat", "input": "x", **body})
    assert response.status_code == 400 and response.json()["error"]["param"] == param
