"""The Hugging Face adapter's completions, embeddings, logprobs, penalties and JSON output, per format.

Driven through a real worker process (server.worker_client.WorkerFactory) without the HTTP app: the
routes that map these features are tested with them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jsonschema
import pytest
from hf_support import FORMATS, HELLO, DirectWorker, build_demo_models, hf_entry

from server.errors import InvalidRequest, UnsupportedCapability
from tinymodels import hf as tiny_hf

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9},
                   "tag": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "n", "tag"],
    "additionalProperties": False,
}


@pytest.fixture(scope="session")
def demo_root() -> Path:
    return build_demo_models()


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
