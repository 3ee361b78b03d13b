"""Tool calls in the model's own syntax, end to end on GGUF and Hugging Face models.

The demo models' templates teach Hermes/Qwen calls (<tool_call>{...}</tool_call>, each marker one
token). The random models are steered with logit_bias: banning the opener gives plain text,
forcing it opens a call, after which the grammar holds the call to the tool's parameters; forcing
the end token closes the answer once a call is complete. Through the real app, real workers and
the `openai` and `anthropic` packages.
"""

from __future__ import annotations

import json

import anthropic
import pytest
from conftest import serve

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny_gguf
from tinymodels import hf as tiny_hf

TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone.",
    "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "local"]}},
                   "required": ["zone"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                                    "celsius": {"type": "boolean"}},
                   "required": ["city", "celsius"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What time is it?"}]
END = "2"  # </s> in both demo vocabularies
MODELS = ["gguf", "hf"]


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_gguf.build(DEFAULT_ROOT)
    tiny_hf.build(DEFAULT_ROOT)
    models = [
        {"id": "gguf", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.CHAT_FILE), "options": {"n_ctx": 1024},
         "aliases": ["claude-haiku-4-5"]},
        {"id": "hf", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.LLM_DIR), "context_length": 1024},
    ]
    with serve(tmp_path_factory.mktemp("native-tools"), models) as served:
        served.opener = {m: marker_id(served, m, "<tool_call>") for m in MODELS}
        yield served


def marker_id(s, model: str, marker: str) -> str:
    tokens = s.http.post("/tokenize", json={"model": model, "prompt": marker, "add_special_tokens": False}
                         ).raise_for_status().json()["tokens"]
    assert len(tokens) == 1, f"{marker} should be one token of {model}"
    return str(tokens[0])


def chat(s, model: str, **kwargs):
    kwargs.setdefault("messages", ASK)
    kwargs.setdefault("tools", [TIME, WEATHER])
    kwargs.setdefault("temperature", 0)
    return s.client().chat.completions.create(model=model, **kwargs)


@pytest.mark.parametrize("model", MODELS)
def test_models_list_the_syntax_their_template_teaches(s, model):
    assert s.client().models.retrieve(model).model_extra["tool_format"] == "hermes"


@pytest.mark.parametrize("model", MODELS)
def test_tools_are_rendered_through_the_chat_template(s, model):
    body = {"model": model, "messages": ASK, "tools": [TIME], "return_token_strs": True}
    rendered = "".join(s.http.post("/tokenize", json=body).raise_for_status().json()["token_strs"])
    assert "<tools>" in rendered and '"name": "get_time"' in rendered and "<tool_call>" in rendered


@pytest.mark.parametrize("model", MODELS)
def test_required_gives_one_valid_call_in_the_models_syntax(s, model):
    answer = chat(s, model, tool_choice="required", logit_bias={END: 100}, max_tokens=120)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_time":
        assert arguments in ({"zone": "utc"}, {"zone": "local"})
    else:
        assert call.function.name == "get_weather" and set(arguments) == {"city", "celsius"}
        assert len(arguments["city"]) <= 6 and isinstance(arguments["celsius"], bool)
    assert not choice.message.content


@pytest.mark.parametrize("model", MODELS)
def test_a_named_function_is_the_one_called(s, model):
    answer = chat(s, model, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                  logit_bias={END: 100}, max_tokens=120)
    [call] = answer.choices[0].message.tool_calls
    assert call.function.name == "get_weather"


@pytest.mark.parametrize("model", MODELS)
def test_with_tools_plain_text_streams_as_it_is_written(s, model):
    stream = chat(s, model, logit_bias={s.opener[model]: -100, END: -100}, max_tokens=24, stream=True)
    chunks = [c for c in stream if c.choices]
    texts = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(texts) > 1  # arrived in pieces while generated, not in one piece at the end
    assert not any(c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "<tool_call>" not in "".join(texts)


@pytest.mark.parametrize("model", MODELS)
def test_an_opener_switches_the_grammar_on_and_a_cut_call_is_never_sent(s, model):
    """Forcing the opener at every free step: calls one after another, each valid, until max_tokens
    cuts one; the complete ones arrive as tool_calls, nothing of the cut one arrives at all."""
    stream = chat(s, model, tools=[TIME], logit_bias={s.opener[model]: 100}, max_tokens=100, stream=True)
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls: dict[int, dict] = {}
    for c in chunks:
        for fragment in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(fragment.index, {"name": "", "arguments": ""})
            entry["name"] += fragment.function.name or ""
            entry["arguments"] += fragment.function.arguments or ""
    assert calls, "at least one complete call within 100 tokens"
    assert all(c["name"] == "get_time" and json.loads(c["arguments"])["zone"] in ("utc", "local")
               for c in calls.values())
    assert chunks[-1].choices[0].finish_reason == "length"
    assert not any(mark in content for mark in ("<tool_call>", "</tool_call>", '"name"', "{"))


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_result_round_trip_renders_and_answers(s, model):
    first = chat(s, model, tools=[TIME], tool_choice="required", logit_bias={END: 100}, max_tokens=80)
    call = first.choices[0].message.tool_calls[0]
    messages = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "12:00"}]
    rendered = "".join(s.http.post("/tokenize", json={"model": model, "messages": messages, "return_token_strs": True}
                                   ).raise_for_status().json()["token_strs"])
    assert "<tool_response>\n12:00\n</tool_response>" in rendered and call.function.arguments in rendered
    second = chat(s, model, messages=messages, tools=[TIME], logit_bias={s.opener[model]: -100}, max_tokens=8)
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_anthropic_tool_use_on_a_native_syntax_model(s):
    client = anthropic.Anthropic(base_url=s.base_url, api_key="unused")
    tool = {"name": "get_time", "description": "The time in a zone.", "input_schema": TIME["function"]["parameters"]}
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=80, tools=[tool],
                                     tool_choice={"type": "any"}, messages=ASK)
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_time" and use.input["zone"] in ("utc", "local")
    assert message.stop_reason in ("tool_use", "max_tokens")


def test_responses_function_call_on_a_native_syntax_model(s):
    tool = {"type": "function", "name": "get_time", "parameters": TIME["function"]["parameters"]}
    response = s.client().responses.create(model="gguf", input="What time is it?", tools=[tool],
                                           tool_choice="required", max_output_tokens=80)
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_time" and json.loads(call.arguments)["zone"] in ("utc", "local")
