"""GGUF text models end to end: the real app, real llama.cpp workers, the real openai client.

Random weights produce gibberish: tests assert on shape, protocol, counts and constraints.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from conftest import serve

from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny

HELLO = [{"role": "user", "content": "hello there"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
                                                        "celsius": {"type": "boolean"}},
                       "required": ["city", "celsius"], "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
def models_root():
    tiny.build(DEFAULT_ROOT)
    return DEFAULT_ROOT


@pytest.fixture(scope="module")
def s(models_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf")
    nofim = tmp / "nofim.gguf"
    tiny.write_llama(nofim, fim=False, seed=2)
    data = (models_root / tiny.CHAT_FILE).read_bytes()
    (tmp / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (tmp / "empty.gguf").write_bytes(b"")
    models = [
        {"id": "llama", "backend": "gguf", "path": str(models_root / tiny.CHAT_FILE), "options": {"n_ctx": 1024}},
        {"id": "nofim", "backend": "gguf", "path": str(nofim), "options": {"n_ctx": 1024}},
        {"id": "embed", "backend": "gguf", "path": str(models_root / tiny.EMBED_FILE), "options": {"embedding": True}},
        {"id": "plain", "backend": "gguf", "path": str(models_root / tiny.CHAT_FILE),
         "options": {"n_ctx": 1024, "chat_template": "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"}},
        {"id": "hostile", "backend": "gguf", "path": str(models_root / tiny.CHAT_FILE),
         "options": {"n_ctx": 1024, "chat_template": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}},
        {"id": "truncated", "backend": "gguf", "path": str(tmp / "truncated.gguf")},
        {"id": "empty", "backend": "gguf", "path": str(tmp / "empty.gguf")},
    ]
    with serve(tmp, models, model_dirs=[str(tmp), str(models_root)]) as served:
        yield served


def chat(s, **kwargs):
    kwargs.setdefault("model", "llama")
    kwargs.setdefault("messages", HELLO)
    kwargs.setdefault("max_tokens", 8)
    return s.client().chat.completions.create(**kwargs)


def test_chat_returns_text_and_usage(s):
    reply = chat(s, max_tokens=6, logit_bias={"2": -100, "4": -100})  # no EOS: exactly 6 tokens
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "length"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6


def test_streaming_chat_sends_role_content_finish_and_usage(s):
    chunks = list(chat(s, max_tokens=5, stream=True, stream_options={"include_usage": True},
                       logit_bias={"2": -100, "4": -100}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_string_ends_generation_with_stop(s):
    # Token 8 + 0x41 is the byte "A"; biasing it to the top makes "A" the whole output.
    reply = chat(s, max_tokens=20, logit_bias={str(8 + 0x41): 100}, stop=["AAA"])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == ""
    reply = chat(s, max_tokens=20, logit_bias={str(8 + 0x41): 100}, stop="B")
    assert reply.choices[0].message.content == "A" * 20


def test_same_seed_gives_same_output_and_other_seed_differs(s):
    first = chat(s, max_tokens=12, seed=42, temperature=1.0).choices[0].message.content
    again = chat(s, max_tokens=12, seed=42, temperature=1.0).choices[0].message.content
    other = chat(s, max_tokens=12, seed=43, temperature=1.0).choices[0].message.content
    assert first == again
    assert first != other


def test_max_completion_tokens_wins_over_max_tokens(s):
    reply = chat(s, max_tokens=9, max_completion_tokens=3, logit_bias={"2": -100, "4": -100})
    assert reply.usage.completion_tokens == 3


def test_frequency_and_presence_penalties_discourage_repeats(s):
    a = str(8 + 0x41)  # the byte "A", pushed up hard enough to repeat without a penalty
    plain = chat(s, max_tokens=20, seed=9, logit_bias={a: 10, "2": -100, "4": -100}).choices[0].message.content
    damped = chat(s, max_tokens=20, seed=9, logit_bias={a: 10, "2": -100, "4": -100},
                  frequency_penalty=2.0, presence_penalty=2.0).choices[0].message.content
    assert plain.count("A") >= 15
    assert damped.count("A") < plain.count("A") - 5


def test_n_2_returns_two_choices(s):
    reply = chat(s, n=2, seed=7, max_tokens=6, logit_bias={"2": -100, "4": -100})
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content
    assert reply.usage.completion_tokens == 12


def test_chat_logprobs_carry_top_alternatives(s):
    reply = chat(s, max_tokens=5, logprobs=True, top_logprobs=3, logit_bias={"2": -100, "4": -100})
    content = reply.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
    streamed = list(chat(s, max_tokens=5, stream=True, logprobs=True, top_logprobs=1, logit_bias={"2": -100}))
    entries = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 5 and all(len(e.top_logprobs) == 1 for e in entries)


def test_json_schema_output_parses_and_validates(s):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "colour": {"enum": ["red", "green", "blue"]},
                                               "tag": {"type": "string", "pattern": "^[a-z]{1,6}$"}},
              "required": ["ok", "colour", "tag"], "additionalProperties": False}
    for seed in (1, 2, 3):
        reply = chat(s, max_tokens=120, seed=seed, response_format={
            "type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_a_template_without_tool_syntax_calls_tools_through_the_json_fallback(s):
    """`plain`'s template teaches no call syntax: calls come through our constrained JSON wrapper."""
    client = s.client()
    assert client.models.retrieve("plain").model_extra["tool_format"] == "json"
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "Weather?"}],
                                               tools=[WEATHER], tool_choice=choice, max_tokens=120, seed=5)
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason == "tool_calls"
        call = message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    follow_up = client.chat.completions.create(model="plain", max_tokens=6, messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ])
    assert follow_up.choices[0].finish_reason in ("stop", "length")
    assert follow_up.choices[0].message.tool_calls is None
    assert isinstance(follow_up.choices[0].message.content, str)


def test_streamed_json_fallback_call_fragments_carry_index_id_and_name(s):
    chunks = list(chat(s, model="plain", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER],
                       tool_choice="required", max_tokens=120, seed=5, stream=True))
    fragments = [t for c in chunks if c.choices and c.choices[0].delta.tool_calls for t in c.choices[0].delta.tool_calls]
    assert fragments[0].index == 0 and fragments[0].id.startswith("call_")
    assert fragments[0].type == "function" and fragments[0].function.name == "get_weather"
    arguments = "".join(f.function.arguments or "" for f in fragments)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_unknown_named_tool_is_400(s):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(s, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.body["param"] == "tool_choice"


def test_completion_default_and_prompt_list_order(s):
    client = s.client()
    reply = client.completions.create(model="llama", prompt="def add(a, b):", logit_bias={"2": -100, "4": -100})
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens == 16  # max_tokens defaults to 16 on this endpoint
    many = client.completions.create(model="llama", prompt=["one", "two"], n=2, max_tokens=3, seed=1)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]


def test_completion_with_suffix_fills_in_the_middle(s):
    reply = s.client().completions.create(model="llama", prompt="def f(x):\n    return ", suffix="\n\nprint(f(2))",
                                          max_tokens=8, seed=3)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 20  # the FIM tokens plus both sides went in


def test_suffix_on_a_model_without_fim_tokens_is_400(s):
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().completions.create(model="nofim", prompt="def f(x):", suffix="pass", max_tokens=4)
    assert caught.value.body["param"] == "suffix"
    assert "fill-in-the-middle" in caught.value.message


def test_completion_echo_with_legacy_logprobs(s):
    prompt = "abc def"
    reply = s.client().completions.create(model="llama", prompt=prompt, echo=True, logprobs=2, max_tokens=4,
                                          logit_bias={"2": -100, "4": -100})
    choice = reply.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) > 4  # the prompt's tokens, then the 4 generated ones
    assert lp.text_offset == sorted(lp.text_offset)
    assert lp.text_offset[-4] >= len(prompt)
    assert all(v is None or v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs[1:])


def test_streaming_completion_with_usage(s):
    chunks = list(s.client().completions.create(model="llama", prompt="x", max_tokens=4, stream=True,
                                                stream_options={"include_usage": True},
                                                logit_bias={"2": -100, "4": -100}))
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_embeddings_float_and_base64_agree(s):
    client = s.client()
    inputs = ["the cat sat", "on the mat"]
    floats = client.embeddings.create(model="embed", input=inputs, encoding_format="float")
    response = s.http.post("/v1/embeddings", json={"model": "embed", "input": inputs, "encoding_format": "base64"})
    encoded = response.json()
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    for item, raw in zip(floats.data, encoded["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(raw["embedding"]), dtype="<f4")
        assert np.allclose(decoded, np.asarray(item.embedding, dtype=np.float32))
        assert abs(np.linalg.norm(decoded) - 1.0) < 1e-3
    default = client.embeddings.create(model="embed", input="the cat sat")  # openai-python asks for base64
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)


def test_embeddings_dimensions_is_a_clear_400(s):
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().embeddings.create(model="embed", input="x", dimensions=8)
    assert caught.value.body["param"] == "dimensions"


def test_chat_model_refuses_embeddings_and_embedding_model_refuses_chat(s):
    with pytest.raises(openai.BadRequestError):
        s.client().embeddings.create(model="llama", input="x")
    with pytest.raises(openai.BadRequestError):
        chat(s, model="embed")


def test_prompt_longer_than_context_is_400_before_generation(s):
    before = s.resident("llama", stats=True)
    before_tokens = before["worker"]["tokens_generated"] if before else 0
    with pytest.raises(openai.BadRequestError) as caught:
        chat(s, messages=[{"role": "user", "content": "word " * 500}])
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().completions.create(model="llama", prompt="word " * 500, stream=True)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().embeddings.create(model="embed", input="word " * 500)
    assert caught.value.code == "context_length_exceeded"
    assert s.resident("llama", stats=True)["worker"]["tokens_generated"] == before_tokens


def test_bad_numbers_are_400_with_param(s):
    for field, value in (("top_logprobs", 21), ("logit_bias", {"5": 101}), ("temperature", float("nan"))):
        body = {"model": "llama", "messages": HELLO, "logprobs": True, field: value}
        response = s.http.post("/v1/chat/completions", content=json.dumps(body).replace("NaN", "1e999"),
                               headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["param"].startswith(field)


def test_disconnect_mid_stream_stops_generation(s):
    chat(s, max_tokens=1)  # loaded
    start = s.resident("llama", stats=True)["worker"]["tokens_generated"]
    # No max_tokens: the budget is the rest of the 1024-token context (about a second of decoding).
    body = {"model": "llama", "messages": HELLO, "stream": True, "logit_bias": {"2": -100, "4": -100},
            "logprobs": True, "top_logprobs": 20}
    with httpx.Client(base_url=s.base_url, timeout=30) as client, \
            client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    s.wait_until(lambda: s.resident("llama", stats=True)["worker"]["active"] == 0, timeout=5.0)
    first = s.resident("llama", stats=True)["worker"]["tokens_generated"]
    time.sleep(0.3)
    assert s.resident("llama", stats=True)["worker"]["tokens_generated"] == first
    budget = 1024 - chat(s, max_tokens=1).usage.prompt_tokens
    # It stopped short of the end. (How soon is asserted with a slow fake engine in
    # test_arbiter_e2e; this tiny model decodes the whole budget in about a second, so a loaded
    # machine can let it get far before the disconnect lands.)
    assert first - start < budget


def test_concurrent_requests_decode_together(s):
    body = {"model": "llama", "prompt": "go", "max_tokens": 48, "logit_bias": {"2": -100, "4": -100}}
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: s.http.post("/v1/completions", json={**body, "seed": i}).json(), range(4)))
    assert all(r["usage"]["completion_tokens"] == 48 for r in replies)
    assert s.resident("llama", stats=True)["worker"]["peak_sequences"] >= 2


def test_batched_requests_sharing_a_prompt_match_a_lone_request(s):
    body = {"model": "llama", "prompt": "A shared system prompt, then", "max_tokens": 24, "temperature": 0,
            "logit_bias": {"2": -100, "4": -100}}
    alone = s.http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    s.http.post("/v1/completions", json={**body, "prompt": "something else"})  # evict the cached prefix
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: s.http.post("/v1/completions", json=body).json(), range(3)))
    assert [r["choices"][0]["text"] for r in together] == [alone] * 3


def test_requests_too_big_to_share_the_kv_pool_wait_their_turn(s):
    # Each reserves 700 of the 1024 cells: the second waits for the first instead of overflowing.
    body = {"model": "llama", "prompt": "go", "max_tokens": 700, "logit_bias": {"2": -100, "4": -100}}
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda i: s.http.post("/v1/completions", json={**body, "seed": i}).json(), range(2)))
    assert [r["usage"]["completion_tokens"] for r in replies] == [700, 700]
    assert [r["choices"][0]["finish_reason"] for r in replies] == ["length", "length"]


def test_chat_template_override_is_used(s):
    reply = chat(s, model="plain", max_tokens=1)
    # BOS, the space piece SPM adds, then one token per character of "[user]hello there" (its space is one piece)
    assert reply.usage.prompt_tokens == 1 + 1 + len("[user]hello there")
    assert chat(s, max_tokens=1).usage.prompt_tokens != reply.usage.prompt_tokens


def test_hostile_chat_template_is_refused_by_the_sandbox(s):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(s, model="hostile", max_tokens=1)
    assert "chat template" in caught.value.message and "unsafe" in caught.value.message


def test_models_list_reports_context_capabilities_state_and_memory(s):
    listed = {m.id: m.model_extra for m in s.client().models.list()}
    llama = listed["llama"]
    # n_ctx 1024 allocated of the 2048 the file was trained for
    assert llama["context_length"] == llama["max_model_len"] == 1024 and llama["max_context_length"] == 2048
    assert llama["capabilities"] == ["chat", "completion", "fim", "tools"]
    assert listed["nofim"]["capabilities"] == ["chat", "completion", "tools"]
    assert listed["embed"]["capabilities"] == ["embedding"]
    assert all(m["memory_estimate_mb"] > 0 for m in listed.values())
    chat(s, max_tokens=1)
    one = s.client().models.retrieve("llama").model_extra
    assert one["state"] == "loaded" and one["context_length"] == 1024
    assert {m["state"] for m in listed.values()} <= {"loaded", "unloaded", "parked"}


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_broken_gguf_fails_to_load_clearly_while_others_serve(s, damage):
    client = s.client()
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=damage, messages=HELLO, max_tokens=2)
    assert caught.value.code == "model_load_failed"
    assert ("truncated" if damage == "truncated" else "empty (0 bytes)") in caught.value.message
    assert chat(s, max_tokens=2).choices[0].finish_reason in ("stop", "length")
    assert s.resident(damage) is None
    assert s.http.get("/health/ready").status_code == 200
