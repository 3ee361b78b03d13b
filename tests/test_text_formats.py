"""The text features on every format (GGUF, HF fp32 on CPU, bitsandbytes 4/8-bit, GPTQ), end to end.

One served app holds every tiny demo model; each behaviour runs through the real HTTP app, real
worker processes and the `openai` package, parametrized over the formats. Random weights produce
gibberish: tests assert on shape, protocol, counts, constraints and determinism, never on words.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import openai
import pytest
from conftest import serve
from hf_support import HELLO, hf_entry
from test_text_gguf import WEATHER

import tinymodels
from tinymodels import gguf as tiny_gguf
from tinymodels import hf as tiny_hf

# Format -> model id in the served app.
MODELS = {"gguf": "gguf", "hf": "hf-fp16", "bnb4": "hf-bnb4", "bnb8": "hf-bnb8", "gptq": "hf-gptq"}
FORMATS = list(MODELS)
NO_EOS = {"2": -100, "4": -100}  # </s> and <|im_end|> share these ids in both tiny tokenizers: exact counts
LONG = "word " * 3000  # past both the GGUF model's 1024 and the HF models' 2048 tokens
SCHEMA = {"type": "object",
          "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9},
                         "colour": {"enum": ["red", "green", "blue"]},
                         "tag": {"type": "string", "pattern": "^[a-z]{1,6}$"}},
          "required": ["ok", "n", "colour", "tag"], "additionalProperties": False}


@pytest.fixture(scope="module")
def demo_root() -> Path:
    return tinymodels.build_all()


def without_fim(source: Path, target: Path) -> Path:
    """A copy of an HF model whose tokenizer lacks the fill-in-the-middle tokens."""
    shutil.copytree(source, target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = target / name
        text = path.read_text()
        for i, token in enumerate(("<fim_prefix>", "<fim_suffix>", "<fim_middle>")):
            text = text.replace(token, f"<unused_{i}>")
        path.write_text(text)
    return target


@pytest.fixture(scope="module")
def s(demo_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    tiny_gguf.write_llama(tmp / "nofim.gguf", fim=False, seed=2)
    models = [
        {"id": "gguf", "backend": "gguf", "path": str(demo_root / tiny_gguf.CHAT_FILE), "options": {"n_ctx": 1024}},
        hf_entry(demo_root, "fp16", embedding=True),  # a causal model that also embeds
        hf_entry(demo_root, "bnb4"),
        hf_entry(demo_root, "bnb8"),
        hf_entry(demo_root, "gptq"),
        {"id": "embed-gguf", "backend": "gguf", "path": str(demo_root / tiny_gguf.EMBED_FILE),
         "options": {"embedding": True}},
        {"id": "embed-hf", "backend": "hf", "path": str(demo_root / tiny_hf.EMBED_DIR), "options": {"embedding": True}},
        {"id": "nofim-gguf", "backend": "gguf", "path": str(tmp / "nofim.gguf"), "options": {"n_ctx": 1024}},
        {"id": "nofim-hf", "backend": "hf", "path": str(without_fim(demo_root / tiny_hf.LLM_DIR, tmp / "nofim-hf"))},
    ]
    with serve(tmp, models, budget_mb=16384, model_dirs=[str(tmp), str(demo_root)]) as served:
        yield served


def token_id(demo_root: Path, fmt: str, char: str) -> str:
    """The id of a one-character token in the format's tiny vocabulary."""
    if fmt == "gguf":
        return str(8 + ord(char))  # byte tokens follow <unk> <s> </s> and the five control tokens
    vocab = json.loads((demo_root / tiny_hf.LLM_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    return str(vocab[char])


def chat(s, fmt, **kwargs):
    kwargs.setdefault("messages", HELLO)
    kwargs.setdefault("max_tokens", 8)
    return s.client().chat.completions.create(model=MODELS[fmt], **kwargs)


def complete(s, fmt, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    return s.client().completions.create(model=MODELS[fmt], **kwargs)


# ---- response_format -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_json_schema_output_parses_and_validates(s, fmt):
    for seed in (1, 2):
        reply = chat(s, fmt, max_tokens=120, seed=seed, response_format={
            "type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}})
        assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


@pytest.mark.parametrize("fmt", FORMATS)
def test_json_object_output_is_a_json_object(s, fmt, demo_root):
    # Favouring `"` lets a random model close its strings.
    reply = chat(s, fmt, max_tokens=200, seed=1, logit_bias={token_id(demo_root, fmt, '"'): 6},
                 response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


# ---- tools -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_call_round_trip(s, fmt):
    question = [{"role": "user", "content": "Weather?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = chat(s, fmt, messages=question, tools=[WEATHER], tool_choice=choice, max_tokens=120, seed=5,
                     parallel_tool_calls=False)  # the demo templates' Hermes syntax: one call, then the end
        assert reply.choices[0].finish_reason == "tool_calls"
        message = reply.choices[0].message
        assert message.role == "assistant" and message.content is None
        call = message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    follow_up = chat(s, fmt, max_tokens=6, tools=[WEATHER], messages=[
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ])
    assert follow_up.choices[0].finish_reason in ("stop", "length")
    assert follow_up.choices[0].message.tool_calls is None
    assert isinstance(follow_up.choices[0].message.content, str)
    assert follow_up.usage.prompt_tokens > reply.usage.prompt_tokens  # the call and its result went in


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_tool_call_assembles_into_valid_arguments(s, fmt):
    chunks = list(chat(s, fmt, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER],
                       tool_choice="required", max_tokens=120, seed=5, stream=True, parallel_tool_calls=False))
    fragments = [t for c in chunks if c.choices and c.choices[0].delta.tool_calls for t in c.choices[0].delta.tool_calls]
    assert fragments[0].index == 0 and fragments[0].id.startswith("call_")
    assert fragments[0].type == "function" and fragments[0].function.name == "get_weather"
    assert all(f.index == 0 for f in fragments)
    arguments = "".join(f.function.arguments or "" for f in fragments)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_tool_call_cut_by_max_tokens_never_shows_wrapper_text(s, fmt):
    question = [{"role": "user", "content": "Weather?"}]
    reply = chat(s, fmt, messages=question, tools=[WEATHER], tool_choice="required", max_tokens=4, seed=5)
    assert reply.choices[0].finish_reason == "length"
    assert not reply.choices[0].message.content and reply.choices[0].message.tool_calls is None
    chunks = list(chat(s, fmt, messages=question, tools=[WEATHER], tool_choice="required", max_tokens=4, seed=5,
                       stream=True))
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


# ---- logprobs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_chat_logprobs_match_the_completion_tokens(s, fmt):
    reply = chat(s, fmt, max_tokens=6, seed=2, logprobs=True, top_logprobs=3, logit_bias=NO_EOS)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    text = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert text == reply.choices[0].message.content
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob <= tops[0] + 1e-5 and tops[0] <= 0
    chunks = list(chat(s, fmt, max_tokens=5, seed=2, stream=True, logprobs=True, top_logprobs=1, logit_bias=NO_EOS,
                       stream_options={"include_usage": True}))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens == 5
    assert all(len(e.top_logprobs) == 1 for e in entries)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tokens_without_text_still_get_their_logprobs(s, fmt):
    # Id 5 is <fim_prefix> in both tiny vocabularies: a control token that decodes to no text.
    forced = {"5": 100, **NO_EOS}
    reply = complete(s, fmt, prompt="abc", max_tokens=3, logprobs=1, logit_bias=forced)
    assert reply.usage.completion_tokens == 3
    assert len(reply.choices[0].logprobs.tokens) == len(reply.choices[0].logprobs.token_logprobs) == 3
    reply = chat(s, fmt, max_tokens=3, logprobs=True, top_logprobs=1, logit_bias=forced)
    assert reply.usage.completion_tokens == len(reply.choices[0].logprobs.content) == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_held_back_for_a_stop_string_is_sent_when_generation_ends(s, fmt, demo_root):
    # Only "A" and end-of-sequence can be sampled; every "A" might begin the (never completed)
    # stop string, so it is held back until generation ends, by length or by end-of-sequence.
    bias = {token_id(demo_root, fmt, "A"): 100, "2": 100, "4": -100}
    ends = set()
    for seed in range(6):
        reply = complete(s, fmt, prompt="x", max_tokens=6, seed=seed, temperature=1.0, stop=["A" * 12],
                         logit_bias=bias, logprobs=1)
        choice = reply.choices[0]
        generated = choice.logprobs.tokens  # the "A"s; the end-of-sequence token is not text
        assert generated == ["A"] * len(generated)
        assert choice.text == "A" * len(generated), (seed, choice.finish_reason)
        ends.add((choice.finish_reason, len(generated) > 0))
    assert ("stop", True) in ends  # some sequence ended by end-of-sequence after held-back text


# ---- completions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_completion_with_suffix_fills_in_the_middle(s, fmt):
    prompt = "def f(x):\n    return "
    plain = complete(s, fmt, prompt=prompt, max_tokens=4, seed=3)
    fim = complete(s, fmt, prompt=prompt, suffix="\n\nprint(f(2))", max_tokens=4, seed=3)
    assert fim.choices[0].finish_reason in ("stop", "length")
    # The three FIM tokens plus the suffix's own went in around the prompt.
    assert fim.usage.prompt_tokens > plain.usage.prompt_tokens + 3


@pytest.mark.parametrize("model", ["nofim-gguf", "nofim-hf"])
def test_suffix_on_a_model_without_fim_tokens_is_400(s, model):
    with pytest.raises(openai.BadRequestError) as caught:
        s.client().completions.create(model=model, prompt="def f(x):", suffix="pass", max_tokens=4)
    assert caught.value.body["param"] == "suffix"
    assert "fill-in-the-middle" in caught.value.message
    assert s.client().completions.create(model=model, prompt="def f(x):", max_tokens=2).usage.completion_tokens >= 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_completion_echo_with_legacy_logprobs(s, fmt):
    prompt = "abc def"
    reply = complete(s, fmt, prompt=prompt, echo=True, logprobs=2, max_tokens=4, seed=1, logit_bias=NO_EOS)
    choice = reply.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert reply.usage.completion_tokens == 4
    echoed = len(lp.tokens) - 4
    # Every prompt token is echoed, except llama.cpp's BOS, which has no text to point into.
    assert echoed == reply.usage.prompt_tokens - (1 if fmt == "gguf" else 0)
    assert all(offset < len(prompt) for offset in lp.text_offset[:echoed])
    assert lp.text_offset == sorted(lp.text_offset)
    assert lp.text_offset[-4] >= len(prompt)
    assert all(v is None or v <= 0 for v in lp.token_logprobs)
    assert all(v is not None for v in lp.token_logprobs[-4:])
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs[-4:])


@pytest.mark.parametrize("fmt", FORMATS)
def test_completion_seed_reproduces_and_n_2_gives_two_choices(s, fmt):
    def texts(seed):
        reply = complete(s, fmt, prompt="Once upon", n=2, max_tokens=6, seed=seed, temperature=1.0,
                         logit_bias=NO_EOS)
        assert [c.index for c in reply.choices] == [0, 1]
        assert reply.usage.completion_tokens == 12
        return [c.text for c in reply.choices]

    first = texts(42)
    assert first[0] != first[1]
    assert texts(42) == first
    assert texts(43) != first


# ---- embeddings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["embed-gguf", "embed-hf", "hf-fp16"])
def test_embeddings_float_and_base64_agree(s, model):
    inputs = ["the cat sat", "on the mat"]
    floats = s.client().embeddings.create(model=model, input=inputs, encoding_format="float")
    encoded = s.http.post("/v1/embeddings", json={"model": model, "input": inputs, "encoding_format": "base64"})
    assert encoded.status_code == 200
    encoded = encoded.json()
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    assert encoded["usage"]["prompt_tokens"] == floats.usage.prompt_tokens
    for item, raw in zip(floats.data, encoded["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(raw["embedding"]), dtype="<f4")
        assert np.allclose(decoded, np.asarray(item.embedding, dtype=np.float32))
        assert abs(np.linalg.norm(decoded) - 1.0) < 1e-3
    assert not np.allclose(floats.data[0].embedding, floats.data[1].embedding)


# ---- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_context_overflow_is_400_on_chat_and_completions(s, fmt):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(s, fmt, messages=[{"role": "user", "content": LONG}])
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        complete(s, fmt, prompt=LONG)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        complete(s, fmt, prompt=LONG, stream=True)
    assert caught.value.code == "context_length_exceeded"


# ---- two formats sharing a budget too small for both -----------------------------------------------


# On a CPU the arbiter measures a worker's resident memory (a torch worker reads ~730 MiB, a
# llama.cpp one far less) or the worker's own report plus the per-worker overhead, whichever is
# larger. An overhead above half the budget makes the swap independent of what the machine
# measures: each model fits alone, and no estimate of one fits beside the other.
SWAP_OVERHEAD_MB, SWAP_BUDGET_MB = 700, 1400


def test_gguf_and_hf_over_a_small_budget_swap_and_both_keep_answering(demo_root, tmp_path):
    gguf = {"id": "gguf", "backend": "gguf", "path": str(demo_root / tiny_gguf.CHAT_FILE), "options": {"n_ctx": 1024}}
    hf = hf_entry(demo_root, "fp16")
    with serve(tmp_path, [gguf, hf], model_dirs=[str(demo_root)], budget_mb=SWAP_BUDGET_MB,
               worker_overhead_mb=SWAP_OVERHEAD_MB) as s:
        client = s.client()
        for model in ("gguf", "hf-fp16") * 2:
            reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=3, logit_bias=NO_EOS)
            assert reply.usage.completion_tokens == 3
            assert [r["model"] for r in s.ps()["residents"]] == [model]
        snapshot = s.ps()
        assert snapshot["loads"] == 4
        assert snapshot["evictions"] == {"capacity": 3}
        assert SWAP_OVERHEAD_MB < snapshot["peak_mb"] <= SWAP_BUDGET_MB
