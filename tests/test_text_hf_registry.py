"""Hugging Face model entries: the demo registry, memory estimates, and a broken checkpoint."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import openai
import pytest
from conftest import fake
from hf_support import HELLO, build_demo_models, hf_entry

from backends.capability import Capability
from backends.hf.spec import HfSpec
from backends.plan import MIB, Device
from server.registry import load_registry
from tinymodels import hf as tiny_hf


@pytest.fixture(scope="session")
def demo_root() -> Path:
    return build_demo_models()


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


def test_default_registry_serves_the_demo_hf_models_from_the_cache(demo_root):
    registry = load_registry(Path(__file__).resolve().parent.parent / "models.yaml")
    paths = {spec.id: spec.path for spec in registry if spec.backend == "hf"}
    assert paths == {"demo-hf": demo_root / "tiny-hf", "demo-bnb4": demo_root / "tiny-hf",
                     "demo-bnb8": demo_root / "tiny-hf", "demo-gptq": demo_root / "tiny-gptq",
                     "demo-embed-hf": demo_root / "tiny-embed-hf", "demo-rerank": demo_root / "tiny-rerank-hf",
                     "demo-llava-hf": demo_root / "tiny-llava-hf", "demo-blip2": demo_root / "tiny-blip2"}  # "~" expanded
    assert registry.get("demo-gptq").resolve(Device()).quantization == "gptq"  # from the checkpoint's config.json
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

    def plan(**options):
        fields = {k: options.pop(k) for k in ("context_length",) if k in options}
        spec = HfSpec(id="m", backend="hf", path=path, options={"device": "cuda", **options}, **fields)
        return spec.resolve(Device(kind="cuda"))

    fp16, q4, q8 = plan(), plan(quantization="4bit"), plan(quantization="8bit")
    assert 12.5e9 < fp16.weights_bytes < 13.6e9  # 6.7B parameters in fp16
    assert 0.25 < q4.weights_bytes / fp16.weights_bytes < 0.35  # 4-bit linears, fp16 embeddings and head
    assert 0.5 < q8.weights_bytes / fp16.weights_bytes < 0.6
    assert fp16.estimate().kv_cache_mb * MIB == 2 * 32 * 32 * 128 * 4096 * 2  # K and V, every layer, full context
    assert plan(context_length=2048).estimate().kv_cache_mb == fp16.estimate().kv_cache_mb / 2
    assert 3500 < q4.estimate().model_mb < 6500  # what a 7B in 4-bit with a 4k context takes on a 12 GB card
    assert plan(device="cpu").dtype == "float32"


def test_cpu_threads_default_to_half_the_cores_for_generation_and_batching_to_the_dynamic_path(tmp_path,
                                                                                                monkeypatch):
    path = _fake_checkpoint(tmp_path / "llama-7b")
    monkeypatch.setattr("os.cpu_count", lambda: 8)

    def plan(device: str = "cpu", **options):
        spec = HfSpec(id="m", backend="hf", path=path, options={"device": device, **options})
        return spec.resolve(Device(kind=device))

    assert plan().n_threads == 4  # the HTTP process and the OS keep the other half
    assert plan(n_threads=6).n_threads == 6
    assert plan(embedding=True).n_threads == 4  # still a causal LM, read for embeddings
    assert plan("cuda").n_threads == 0  # torch's own: the GPU computes
    assert plan().n_parallel == 4 and plan(n_parallel=2).n_parallel == 2  # dynamic on a CPU: batched
    assert plan("cuda", decode="static").n_parallel == 1  # one StaticCache: one request at a time


def test_two_hf_formats_over_the_budget_take_turns(demo_root, served):
    # Measured on this machine kind, a CPU worker holds ~0.7 GiB (fp16 tiny model) and ~0.9 GiB (GPTQ,
    # whose kernels import more): each fits 1400 MiB alone, the two together do not.
    models = [hf_entry(demo_root, fmt) for fmt in ("fp16", "gptq")]
    with served(models, budget_mb=1400) as s:
        client = s.client()
        for model in ("hf-fp16", "hf-gptq", "hf-fp16", "hf-gptq"):
            reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=3, seed=1)
            assert reply.usage.completion_tokens >= 1
            s.wait_until(lambda model=model: [r["model"] for r in s.ps()["residents"]] == [model])
        assert sum(s.ps()["evictions"].values()) == 3
        assert s.ps()["loads"] == 4
