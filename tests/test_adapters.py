"""LoRA adapters end to end: declared per base in models.yaml, requested as `<model>:<adapter>` (or an
alias) through the real app, real workers and the openai client, on llama.cpp (LoRA GGUFs) and
Hugging Face (PEFT, QLoRA on a 4-bit base) engines; served by the base's one worker, never reloading it."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import openai
import pytest
import yaml
from conftest import serve

from backends.plan import Device
from server.registry import RegistryError, load_registry, parse_spec
from tinymodels import DEFAULT_ROOT
from tinymodels import gguf as tiny_gguf
from tinymodels import hf as tiny_hf
from tinymodels import lora as tiny_lora

NO_END = {"2": -100, "4": -100}  # the GGUF llama's </s> and <|im_end|>: answers run to max_tokens


def gguf_base() -> dict:
    a, b = (str(DEFAULT_ROOT / name) for name in tiny_lora.GGUF_ADAPTERS)
    return {"id": "g", "backend": "gguf", "path": str(DEFAULT_ROOT / tiny_gguf.CHAT_FILE), "options": {"n_ctx": 1024},
            "adapters": [{"name": "a", "path": a, "aliases": ["g-tuned"]}, {"name": "b", "path": b, "scale": 2.0},
                         {"name": "broken", "path": str(DEFAULT_ROOT / tiny_lora.GGUF_MISMATCHED)}]}


def hf_base(model_id: str = "h", **options) -> dict:
    a, b = (str(DEFAULT_ROOT / name) for name in tiny_lora.HF_ADAPTERS)
    return {"id": model_id, "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.LLM_DIR), "options": options,
            "adapters": [{"name": "a", "path": a}, {"name": "b", "path": b},
                         {"name": "broken", "path": str(DEFAULT_ROOT / tiny_lora.HF_MISMATCHED)}]}


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    tiny_lora.build(DEFAULT_ROOT)
    qlora = {"id": "h4", "backend": "hf", "path": str(DEFAULT_ROOT / tiny_hf.LLM_DIR),
             "options": {"quantization": "4bit", "bnb_4bit_quant_type": "nf4"},
             "adapters": [{"name": "qlora", "path": str(DEFAULT_ROOT / tiny_lora.HF_QLORA)}]}
    with serve(tmp_path_factory.mktemp("adapters"), [gguf_base(), hf_base(), qlora], budget_mb=8192) as served:
        yield served


def answer(s, model: str, seed: int = 7, tokens: int = 16, **kwargs) -> str:
    reply = s.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                                               max_tokens=tokens, temperature=1.0, seed=seed, **kwargs)
    return reply.choices[0].message.content


def test_models_list_each_adapter_with_its_base(s):
    listed = {m["id"]: m for m in s.http.get("/v1/models").json()["data"]}
    assert listed["g"]["adapters"] == ["g:a", "g:b", "g:broken"]
    assert listed["g:a"]["base"] == "g" and listed["g:a"]["adapter"] == "a" and listed["g:a"]["aliases"] == ["g-tuned"]
    assert listed["g:b"]["adapter_scale"] == 2.0
    assert listed["g:a"]["capabilities"] == ["chat", "completion", "fim", "tools"]
    assert listed["h4:qlora"]["base"] == "h4"
    assert s.http.get("/v1/models/g-tuned").json()["base"] == "g"


@pytest.mark.parametrize("base", ["g", "h"])
def test_an_adapter_changes_the_output_for_the_same_seed_and_switching_never_reloads_the_base(s, base):
    extra = {"logit_bias": NO_END} if base == "g" else {}
    first = answer(s, base, **extra)
    loads, pid = s.arbiter.loads, s.resident(base)["pid"]
    outputs = {name: answer(s, name, **extra) for name in (f"{base}:a", f"{base}:b", base, f"{base}:a")}
    assert outputs[base] == first  # the base is itself again after an adapter
    assert len({first, outputs[f"{base}:a"], outputs[f"{base}:b"]}) == 3
    assert answer(s, f"{base}:a", **extra) == outputs[f"{base}:a"]
    assert s.arbiter.loads == loads and s.resident(base)["pid"] == pid  # one worker, one load of the base
    if base == "g":
        assert answer(s, "g-tuned", **extra) == outputs["g:a"]  # an alias is the adapter


def test_completions_take_adapter_ids_too(s):
    def complete(model: str) -> str:
        return s.client().completions.create(model=model, prompt="Once upon", max_tokens=8, temperature=0,
                                             logit_bias=NO_END).choices[0].text

    assert complete("g:a") != complete("g")


@pytest.mark.parametrize("base", ["g", "h"])
def test_requests_for_different_adapters_decode_concurrently_as_they_would_alone(s, base):
    names = [base, f"{base}:a", f"{base}:b", f"{base}:a", base]
    alone = [answer(s, name, seed=3, tokens=48, logit_bias=NO_END) for name in names]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        together = list(pool.map(lambda n: answer(s, n, seed=3, tokens=48, logit_bias=NO_END), names))
    # each step decodes one adapter's sequences (GGUF) / rows (HF, backends/hf/batch.py): none reads
    # another's weights
    assert together == alone
    assert s.resident(base, stats=True)["worker"]["adapters"]["a"] == "loaded"


def test_a_qlora_adapter_serves_on_the_4bit_base(s):
    assert answer(s, "h4:qlora") != answer(s, "h4")
    worker = s.resident("h4", stats=True)["worker"]
    assert worker["quantization"] == "4bit" and worker["adapters"] == {"qlora": "loaded"}


def test_an_unknown_adapter_is_not_found(s):
    with pytest.raises(openai.NotFoundError) as missing:
        answer(s, "g:nope")
    assert missing.value.code == "model_not_found" and "a, b, broken" in missing.value.message


@pytest.mark.parametrize("base", ["g", "h"])
def test_a_broken_adapter_fails_clearly_while_the_base_and_the_others_serve(s, base):
    with pytest.raises(openai.InternalServerError) as failed:
        s.client(max_retries=0).chat.completions.create(model=f"{base}:broken", max_tokens=4,
                                                        messages=[{"role": "user", "content": "hi"}])
    body = failed.value.body
    assert failed.value.status_code == 500 and body["code"] == "adapter_load_failed"
    assert "broken" in body["message"] and "failed to load" in body["message"]
    assert answer(s, base) and answer(s, f"{base}:a")
    assert s.resident(base, stats=True)["worker"]["adapters"]["broken"].startswith("failed")


def test_embeddings_are_refused_for_an_adapter_id(s):
    with pytest.raises(openai.BadRequestError) as refused:
        s.client().embeddings.create(model="g:a", input="x")
    assert refused.value.code == "unsupported_model_capability"


# ---- declaring adapters ------------------------------------------------------------------------------


def test_the_estimate_counts_the_adapters_beside_the_base():
    spec = parse_spec(gguf_base())
    alone = parse_spec({**gguf_base(), "adapters": []})
    extra = sum((DEFAULT_ROOT / n).stat().st_size for n in (*tiny_lora.GGUF_ADAPTERS, tiny_lora.GGUF_MISMATCHED))
    difference = spec.resolve(Device()).estimate().weights_mb - alone.resolve(Device()).estimate().weights_mb
    assert abs(difference - extra / 2**20) < 1e-6
    hf_spec, hf_alone = parse_spec(hf_base()), parse_spec({**hf_base(), "adapters": []})
    assert hf_spec.resolve(Device()).estimate().weights_mb > hf_alone.resolve(Device()).estimate().weights_mb


def test_an_adapter_outside_the_allowed_directories_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    registry = tmp_path / "models" / "models.yaml"
    registry.parent.mkdir()
    (registry.parent / "base.gguf").write_bytes((DEFAULT_ROOT / tiny_gguf.CHAT_FILE).read_bytes())
    entry = {"id": "g", "backend": "gguf", "path": "base.gguf",
             "adapters": [{"name": "a", "path": str(elsewhere / "lora.gguf")}]}
    registry.write_text(yaml.safe_dump({"models": [entry]}))
    with pytest.raises(RegistryError, match=r"lora\.gguf is outside the allowed model directories"):
        load_registry(registry, [registry.parent])
    entry["adapters"][0]["path"] = "lora.gguf"  # relative to models.yaml, like a model's own path
    registry.write_text(yaml.safe_dump({"models": [entry]}))
    [spec] = load_registry(registry, [registry.parent])
    assert spec.adapters[0].path == Path(registry.parent / "lora.gguf").resolve()


@pytest.mark.parametrize("entry, reason", [
    ({"id": "f", "backend": "fake", "adapters": [{"name": "a", "path": "/x"}]}, "take no LoRA adapters"),
    ({**gguf_base(), "adapters": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]}, "unique"),
    ({**gguf_base(), "options": {"embedding": True}}, "not for an embedding model"),
    ({**gguf_base(), "adapters": [{"name": "has space", "path": "/x"}]}, "pattern"),
])
def test_adapter_declarations_are_checked(entry, reason):
    with pytest.raises(Exception, match=reason):
        parse_spec(entry)


def test_an_adapter_id_may_not_shadow_another_model(tmp_path):
    registry = tmp_path / "models.yaml"
    clash = {"id": "g:a", "backend": "fake"}
    registry.write_text(yaml.safe_dump({"models": [gguf_base(), clash]}))
    with pytest.raises(RegistryError, match="'g:a' is already used"):
        load_registry(registry)


def test_serving_without_adapters_is_unchanged(tmp_path):
    with serve(tmp_path, [{**gguf_base(), "adapters": []}]) as plain:
        assert answer(plain, "g", logit_bias=NO_END)
        assert "adapters" not in plain.http.get("/v1/models/g").json()


def test_a_parked_base_comes_back_from_ram_with_its_adapters(served):
    from test_scheduler_e2e import parked, swaps_from

    with served([{**hf_base(), "keep_alive": 0}], ram_budget_mb=2000) as s:
        before = {name: answer(s, name) for name in ("h", "h:a")}
        s.wait_until(lambda: "h" in parked(s), timeout=30)
        after = {name: answer(s, name) for name in ("h:a", "h")}
        assert after == before  # the parked copy is the base alone; the adapters load from their files again
        assert swaps_from(s, "h", "ram") >= 1
