"""Hugging Face text models in every format (fp16/fp32, bitsandbytes 4-bit and 8-bit, GPTQ), end to end.

Chat goes through the real app, real worker processes and the `openai` package. Completions,
embeddings, logprobs and response_format are driven through a real worker process directly
(their HTTP mappings live in the routes). The models are the project's tiny random ones
(tinymodels/hf.py): tests assert on protocol, counts and determinism, never on words.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import struct
import threading
import time
from pathlib import Path

import jsonschema
import openai
import pytest
from conftest import fake, serve
from pydantic import TypeAdapter

from backends.capability import Capability
from server.errors import InvalidRequest, UnsupportedCapability
from server.registry import HfSpec, ModelSpec, load_registry
from server.workers import WorkerFactory
from tinymodels import DEFAULT_ROOT
from tinymodels import hf as tiny_hf

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

FORMATS = {
    "fp16": ("tiny-hf", {}),  # float32 on a CPU, fp16 on a GPU (dtype: auto)
    "bnb4": ("tiny-hf", {"quantization": "4bit", "bnb_4bit_quant_type": "nf4", "double_quant": True}),
    "bnb8": ("tiny-hf", {"quantization": "8bit"}),
    "gptq": ("tiny-gptq", {}),
}
HELLO = [{"role": "user", "content": "hello there"}]
LONG_SEED = 5  # with HELLO, this seed runs past 250 tokens before the random model samples </s>
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9},
                   "tag": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "n", "tag"],
    "additionalProperties": False,
}


@pytest.fixture(scope="session")
def demo_root() -> Path:
    tiny_hf.build(DEFAULT_ROOT)  # cached: builds only what is missing
    return DEFAULT_ROOT


def hf_entry(root: Path, fmt: str, **options) -> dict:
    directory, base = FORMATS[fmt]
    return {"id": f"hf-{fmt}", "backend": "hf", "path": str(root / directory), "options": {**base, **options}}


# ---- through the HTTP app -------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(FORMATS))
def app(request, demo_root, tmp_path_factory):
    fmt = request.param
    with serve(tmp_path_factory.mktemp(fmt), [hf_entry(demo_root, fmt)], budget_mb=4096) as s:
        s.model = f"hf-{fmt}"
        yield s


def chat(app, **kwargs):
    kwargs.setdefault("messages", HELLO)
    kwargs.setdefault("max_tokens", 12)
    return app.client().chat.completions.create(model=app.model, **kwargs)


def tokens_generated(app) -> int:
    return app.resident(app.model, stats=True)["worker"]["tokens_generated"]


def test_chat_answers_with_usage(app):
    reply = chat(app, max_tokens=8, seed=1)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens > 0
    assert 1 <= reply.usage.completion_tokens <= 8


def test_stream_is_token_by_token_and_matches_the_whole_reply(app):
    whole = chat(app, seed=7, max_tokens=12)
    chunks = list(chat(app, seed=7, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 3  # streamed as it was generated, not in one piece
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]


def test_stop_string_cuts_the_text_before_it(app):
    text = chat(app, seed=3, max_tokens=40).choices[0].message.content
    assert len(text) >= 16, "the random model ended too early for this test; pick another seed"
    stop = text[10:13]
    reply = chat(app, seed=3, max_tokens=40, stop=[stop, "never-appears"])
    assert reply.choices[0].message.content == text[: text.find(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_same_seed_gives_the_same_output_and_another_seed_differs(app):
    first = chat(app, seed=42, max_tokens=16).choices[0].message.content
    again = chat(app, seed=42, max_tokens=16).choices[0].message.content
    other = chat(app, seed=43, max_tokens=16).choices[0].message.content
    assert first == again
    assert first != other


def test_n_2_gives_two_different_choices(app):
    reply = chat(app, n=2, seed=9, max_tokens=10)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content != reply.choices[1].message.content
    assert 2 <= reply.usage.completion_tokens <= 20


def test_disconnect_mid_stream_stops_generation_in_the_worker(app):
    limit = 250
    reference = chat(app, seed=LONG_SEED, max_tokens=limit)  # what this seed produces when nobody leaves
    assert reference.usage.completion_tokens == limit, "the seed hit </s> early; the test would prove nothing"
    before = tokens_generated(app)
    stream = chat(app, seed=LONG_SEED, max_tokens=limit, stream=True)
    received = iter(stream)
    for _ in range(4):
        chunk = next(received)
        assert not chunk.choices[0].finish_reason
    stream.close()
    counts = [tokens_generated(app)]
    while True:  # wait until the worker's counter stops moving
        time.sleep(0.3)
        counts.append(tokens_generated(app))
        if counts[-1] == counts[-2]:
            break
    assert counts[-1] - before < limit // 2
    assert app.resident(app.model, stats=True)["worker"]["active"] == 0


def test_prompt_longer_than_the_context_is_a_400_before_generating(app):
    before = tokens_generated(app)
    with pytest.raises(openai.BadRequestError) as err:
        chat(app, messages=[{"role": "user", "content": "lorem ipsum dolor " * 1200}], max_tokens=4)
    assert err.value.status_code == 400
    assert err.value.code == "context_length_exceeded"
    assert tokens_generated(app) == before


def test_estimate_matches_the_loaded_footprint(app):
    spec = app.app.state.services.registry.get(app.model)
    worker = app.resident(app.model, stats=True)["worker"]
    # weights: safetensors sizes scaled by dtype and quantization bits vs what torch holds
    assert 0.8 <= spec.weight_bytes() / worker["weights_bytes"] <= 1.25
    # weights + KV cache vs the worker's own account; the full estimate covers it
    assert 0.8 <= (spec.weight_bytes() + spec.kv_bytes()) / (worker["memory_mb"] * 1024 * 1024) <= 1.25
    assert spec.estimate_mb() >= worker["memory_mb"]


def test_models_list_shows_chat_and_completion_and_the_context(app):
    listed = {m["id"]: m for m in app.http.get("/v1/models").raise_for_status().json()["data"]}
    assert listed[app.model]["capabilities"] == ["chat", "completion"]
    assert listed[app.model]["max_model_len"] == 2048


def test_truncated_checkpoint_fails_clearly_while_other_models_serve(demo_root, tmp_path, served):
    broken = tmp_path / "broken"
    shutil.copytree(demo_root / tiny_hf.LLM_DIR, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with served([{"id": "broken", "backend": "hf", "path": str(broken)}, fake("ok")]) as s:
        with pytest.raises(openai.APIStatusError) as err:
            s.client().chat.completions.create(model="broken", messages=HELLO, max_tokens=2)
        assert err.value.code == "model_load_failed"
        assert "SafetensorError" in err.value.message  # the engine's own reason reaches the client
        assert s.client().chat.completions.create(model="ok", messages=HELLO, max_tokens=2).choices
        assert s.resident("broken") is None


# ---- through a worker process directly --------------------------------------------------------


class DirectWorker:
    """A real worker process driven from a private event loop, without the HTTP app."""

    def __init__(self, entry: dict):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.spec = TypeAdapter(ModelSpec).validate_python(entry)
        self.worker = self.run(WorkerFactory().start(self.spec))

    def run(self, coroutine, timeout: float = 180):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, method: str, **params) -> tuple[list[dict], dict]:
        async def go():
            return await (await self.worker.call(method, params)).result()

        return self.run(go())

    def text(self, method: str, **params) -> tuple[str, list[dict], dict]:
        chunks, final = self.call(method, **params)
        logprobs = [entry for chunk in chunks for entry in chunk.get("logprobs", [])]
        return "".join(c["text"] for c in chunks), logprobs, final

    def close(self) -> None:
        self.run(self.worker.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module", params=list(FORMATS))
def direct(request, demo_root):
    worker = DirectWorker(hf_entry(demo_root, request.param, embedding=True))
    yield worker
    worker.close()


def test_completion_echo_gives_the_prompt_and_its_logprobs(direct):
    prompt = "The quick brown fox"
    chunks, final = direct.call("complete", prompt=prompt, echo=True, logprobs=2, max_tokens=5, seed=1)
    assert chunks[0]["text"] == prompt
    echoed = chunks[0]["logprobs"]
    assert echoed[0]["logprob"] is None  # nothing predicts the first token
    assert all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 2 for e in echoed[1:])
    assert [e["text_offset"] for e in echoed] == sorted(e["text_offset"] for e in echoed)
    generated = [e for c in chunks[1:] for e in c.get("logprobs", [])]
    assert final["finish_reason"] == "length"
    assert len(generated) == final["usage"]["completion_tokens"] == 5
    assert final["usage"]["prompt_tokens"] == len(echoed)


def test_completion_suffix_uses_the_models_fim_tokens(direct):
    plain = direct.call("complete", prompt="def add(a, b):", max_tokens=2, seed=1)[1]
    fim = direct.call("complete", prompt="def add(a, b):", suffix="    return a + b\n", max_tokens=2, seed=1)[1]
    # <fim_prefix> ... <fim_suffix> suffix <fim_middle>: three special tokens plus the suffix's own
    assert fim["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 3


def test_chat_logprobs_describe_each_generated_token(direct):
    text, logprobs, final = direct.text("chat", messages=HELLO, logprobs=True, top_logprobs=3, max_tokens=8,
                                        seed=2)
    assert final["finish_reason"] == "length"
    assert len(logprobs) == final["usage"]["completion_tokens"] == 8
    assert b"".join(bytes(e["bytes"]) for e in logprobs).decode("utf-8", errors="replace") == text
    for entry in logprobs:
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry["logprob"] <= tops[0] + 1e-6
        assert math.isfinite(entry["logprob"])


def test_json_schema_output_parses_and_validates(direct):
    text, _, final = direct.text("chat", messages=HELLO, max_tokens=60, seed=4,
                                 response_format={"type": "json_schema", "schema": SCHEMA})
    assert final["finish_reason"] == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_output_is_a_json_object(direct, demo_root):
    # A random model writes endless strings; favouring the quote token lets strings close, while
    # only the grammar can make the output a well-formed object (the bias alone would give '"""...').
    vocab = json.loads((demo_root / tiny_hf.LLM_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    text, _, final = direct.text("chat", messages=HELLO, max_tokens=200, seed=1,
                                 logit_bias={str(vocab['"']): 6.0}, response_format={"type": "json_object"})
    assert final["finish_reason"] == "stop", text
    assert isinstance(json.loads(text), dict)


def test_logit_bias_forces_a_token(direct):
    text, logprobs, _ = direct.text("chat", messages=HELLO, logprobs=True, max_tokens=6, seed=1,
                                    logit_bias={"300": 100.0})
    assert len({bytes(e["bytes"]) for e in logprobs}) == 1
    assert text == bytes(logprobs[0]["bytes"]).decode("utf-8", errors="replace") * 6


def test_penalties_make_greedy_output_repeat_less(direct):
    def distinct(**penalties) -> int:
        _, logprobs, _ = direct.text("chat", messages=HELLO, logprobs=True, max_tokens=40, temperature=0,
                                     **penalties)
        return len({bytes(e["bytes"]) for e in logprobs})

    assert distinct(presence_penalty=2.0, frequency_penalty=2.0) > distinct()


def test_unknown_logit_bias_token_is_invalid(direct):
    with pytest.raises(InvalidRequest) as err:
        direct.call("chat", messages=HELLO, max_tokens=2, logit_bias={"99999999": 1.0})
    assert err.value.param == "logit_bias"


def test_completion_longer_than_the_context_is_refused(direct):
    with pytest.raises(InvalidRequest) as err:
        direct.call("complete", prompt="lorem ipsum dolor " * 1200, max_tokens=2)
    assert err.value.code == "context_length_exceeded"


def test_embeddings_are_unit_vectors_independent_of_batch_padding(direct):
    _, final = direct.call("embed", inputs=["hello world", "a much longer input that forces padding", "hello world"])
    first, longer, again = final["embeddings"]
    assert len(first) == 64
    assert all(abs(math.fsum(x * x for x in v) - 1.0) < 1e-4 for v in (first, longer, again))
    assert first == again and first != longer
    alone = direct.call("embed", inputs=["hello world"])[1]["embeddings"][0]
    assert max(abs(a - b) for a, b in zip(alone, first, strict=True)) < 1e-3  # the mask hides the padding
    assert final["usage"]["prompt_tokens"] > 0


def test_stats_count_generated_tokens(direct):
    before = direct.run(direct.worker.stats())["tokens_generated"]
    direct.call("chat", messages=HELLO, max_tokens=3, seed=1)
    assert direct.run(direct.worker.stats())["tokens_generated"] == before + 3


# ---- models with their own peculiarities ----------------------------------------------------------


def test_encoder_model_serves_pooled_embeddings_only(demo_root):
    worker = DirectWorker({"id": "embedder", "backend": "hf", "path": str(demo_root / tiny_hf.EMBED_DIR),
                           "options": {"embedding": True}})
    try:
        assert [c.value for c in sorted(worker.spec.capabilities)] == ["embedding"]
        _, final = worker.call("embed", inputs=["hello world", "hello world, again"])
        assert len(final["embeddings"]) == 2 and len(final["embeddings"][0]) == 32
        assert abs(math.fsum(x * x for x in final["embeddings"][0]) - 1.0) < 1e-4
        with pytest.raises(UnsupportedCapability) as err:
            worker.call("chat", messages=HELLO, max_tokens=2)
        assert "embeddings only" in str(err.value)
    finally:
        worker.close()


def test_model_without_fim_tokens_refuses_suffix_and_its_template_is_sandboxed(demo_root, tmp_path):
    copy = tmp_path / "no-fim"
    shutil.copytree(demo_root / tiny_hf.LLM_DIR, copy)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = copy / name
        text = path.read_text()
        for i, token in enumerate(("<fim_prefix>", "<fim_suffix>", "<fim_middle>")):
            text = text.replace(token, f"<unused_{i}>")
        path.write_text(text)
    # With tools it renders them the way transformers' templates do (tojson, loop controls);
    # without, it tries to climb out of the sandbox to Python's classes.
    template = ("{% if tools %}{% for tool in tools %}{{ tool | tojson }}{% break %}{% endfor %}"
                "{% else %}{{ messages.__class__.__mro__[1].__subclasses__() }}{% endif %}")
    worker = DirectWorker({"id": "nofim", "backend": "hf", "path": str(copy), "options": {"chat_template": template}})
    tool = {"type": "function", "function": {"name": "lookup", "description": "<find> & fetch " * 20}}
    try:
        short = worker.call("chat", messages=HELLO, tools=[tool, tool], max_tokens=1)[1]["usage"]["prompt_tokens"]
        tool["function"]["description"] *= 2
        longer = worker.call("chat", messages=HELLO, tools=[tool], max_tokens=1)[1]["usage"]["prompt_tokens"]
        assert longer > short > 40  # one tool rendered (break), as JSON
        with pytest.raises(InvalidRequest) as err:
            worker.call("complete", prompt="def f():", suffix="return 1", max_tokens=2)
        assert err.value.param == "suffix"
        with pytest.raises(InvalidRequest) as err:
            worker.call("chat", messages=HELLO, max_tokens=2)
        assert err.value.param == "messages"
        assert worker.call("complete", prompt="def f():", max_tokens=2)[1]["usage"]["completion_tokens"] >= 1
    finally:
        worker.close()


# ---- the registry side (no engine) ------------------------------------------------------------


def test_default_registry_serves_the_demo_hf_models_from_the_cache(demo_root):
    registry = load_registry(Path(__file__).resolve().parent.parent / "models.yaml")
    paths = {spec.id: spec.path for spec in registry if spec.backend == "hf"}
    assert paths == {"demo-hf": demo_root / "tiny-hf", "demo-bnb4": demo_root / "tiny-hf",
                     "demo-bnb8": demo_root / "tiny-hf", "demo-gptq": demo_root / "tiny-gptq",
                     "demo-embed-hf": demo_root / "tiny-embed-hf"}  # "~" expanded
    assert registry.get("demo-gptq").quantization() == "gptq"  # from the checkpoint's config.json
    assert registry.get("demo-embed-hf").capabilities == {Capability.EMBEDDING}
    assert registry.get("demo-bnb4").capabilities == {Capability.CHAT, Capability.COMPLETION}


def _fake_checkpoint(directory: Path) -> Path:
    """A 7B Llama shape: config.json and a safetensors header (the estimate never reads the data)."""
    layers, hidden, inter, vocab, kv_heads = 32, 4096, 11008, 32000, 32
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": kv_heads,
        "max_position_embeddings": 4096, "vocab_size": vocab, "torch_dtype": "float16"}))
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden],
              "model.norm.weight": [hidden]}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{prefix}self_attn.{name}.weight"] = [hidden, hidden]
        for name, shape in (("gate_proj", [inter, hidden]), ("up_proj", [inter, hidden]),
                            ("down_proj", [hidden, inter])):
            shapes[f"{prefix}mlp.{name}.weight"] = shape
        shapes[f"{prefix}input_layernorm.weight"] = [hidden]
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return directory


def test_estimate_scales_with_quantization_bits_and_context(tmp_path):
    path = _fake_checkpoint(tmp_path / "llama-7b")

    def spec(**options):
        fields = {k: options.pop(k) for k in ("context_length",) if k in options}
        return HfSpec(id="m", backend="hf", path=path, options={"device": "cuda", **options}, **fields)

    fp16, q4, q8 = spec(), spec(quantization="4bit"), spec(quantization="8bit")
    assert 12.5e9 < fp16.weight_bytes() < 13.6e9  # 6.7B parameters in fp16
    assert 0.25 < q4.weight_bytes() / fp16.weight_bytes() < 0.35  # 4-bit linears, fp16 embeddings and head
    assert 0.5 < q8.weight_bytes() / fp16.weight_bytes() < 0.6
    assert fp16.kv_bytes() == 2 * 32 * 32 * 128 * 4096 * 2  # K and V, every layer, full context, fp16
    assert spec(context_length=2048).kv_bytes() == fp16.kv_bytes() / 2
    assert 3500 < q4.estimate_mb() < 6500  # what a 7B in 4-bit with a 4k context takes on a 12 GB card
    assert spec(device="cpu").compute_dtype() == "float32"
