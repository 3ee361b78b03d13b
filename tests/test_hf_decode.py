"""The transformers decode loop's KV-cache paths (backends/hf/decode.py) through the real app and workers:
the static cache (and CUDA graphs, which on a CPU fall back to it) gives the dynamic loop's tokens."""

from __future__ import annotations

import pytest
from conftest import serve
from hf_support import HELLO, build_demo_models, hf_entry

from backends.plan import Device
from server.registry import parse_spec

GREEDY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = build_demo_models()
    models = [{**hf_entry(root, "fp16", decode=kind), "id": kind} for kind in ("dynamic", "static", "cuda-graphs")]
    models.append({**hf_entry(root, "gptq", decode="static"), "id": "gptq-static"})
    models.append({**hf_entry(root, "gptq", decode="dynamic"), "id": "gptq-dynamic"})
    tmp = tmp_path_factory.mktemp("decode")
    with serve(tmp, models, model_dirs=[str(tmp), str(root)], budget_mb=16384) as served:
        yield served


def reply(app, model: str, messages=HELLO, **kwargs) -> str:
    client = app.client()
    eos = {"2": -100}  # </s>: random weights may end at any token; a fixed length compares whole outputs
    return client.chat.completions.create(model=model, messages=messages, logit_bias=eos, **GREEDY,
                                          **kwargs).choices[0].message.content


def test_static_cache_decodes_the_same_tokens_as_the_dynamic_loop(app):
    long = [{"role": "user", "content": "a longer prompt than the first one, so positions move " * 3}]
    expected = [reply(app, "dynamic"), reply(app, "dynamic", long), reply(app, "dynamic")]
    for model in ("static", "cuda-graphs"):
        # the cache is reset between requests: a long prompt after a short one, then the short one again
        assert [reply(app, model), reply(app, model, long), reply(app, model)] == expected, model
    assert reply(app, "gptq-static") == reply(app, "gptq-dynamic")


def test_the_worker_reports_the_decode_path_it_runs(app):
    reply(app, "cuda-graphs")
    stats = {r["model"]: r.get("worker", {}) for r in app.ps(stats=True)["residents"]}
    assert stats["dynamic"]["decode"] == "dynamic" and stats["static"]["decode"] == "static"
    assert stats["cuda-graphs"]["decode"] == "static", "no CUDA device here: the static cache, eagerly"


def test_streaming_and_sampling_work_on_the_static_cache(app):
    client = app.client()
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="static", messages=HELLO, stream=True, seed=7, max_tokens=12, logit_bias={"2": -100}) if c.choices]
    whole = client.chat.completions.create(model="static", messages=HELLO, seed=7, max_tokens=12,
                                           logit_bias={"2": -100}).choices[0].message.content
    assert "".join(pieces) == whole


@pytest.mark.parametrize(("device", "quantization", "expected"), [
    ("cpu", "none", "dynamic"), ("cuda", "none", "cuda-graphs"), ("cuda", "4bit", "static"),
    ("cuda", "gptq", "static")])
def test_auto_decode_is_graphs_on_a_gpu_and_the_dynamic_loop_on_a_cpu(device, quantization, expected):
    root = build_demo_models()
    fmt = {"none": "fp16", "4bit": "bnb4", "gptq": "gptq"}[quantization]
    plan = parse_spec(hf_entry(root, fmt)).resolve(Device(device, 0))
    assert plan.decode == expected
    forced = parse_spec(hf_entry(root, fmt, decode="static")).resolve(Device(device, 0))
    assert forced.decode == "static"
