"""Every engine on CUDA, through the real app and workers: run by scripts/gpu_check.sh on a lent GPU
machine (`pytest -m gpu`); skipped, with the reason, where no CUDA device is visible.

What a CPU cannot show: GGUF with every layer offloaded, HF fp16 / bitsandbytes 4- and 8-bit / GPTQ
kernels, the CUDA-graph decode path, diffusers fp16, CTranslate2 float16, NVML's per-process figure
and the fallback when NVML cannot see the worker (a container without the host's PID namespace),
and the CUDA context given back when a worker exits.
"""

from __future__ import annotations

import base64
import importlib.util
import time

import pytest
from conftest import serve
from hf_support import HELLO, hf_entry

import tinymodels
from bench.gpu_check import wav_seconds
from server.memory import MemoryProbe


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not _cuda(), reason="no CUDA device visible (torch.cuda.is_available() is False); scripts/gpu_check.sh runs "
                        "these on a lent GPU machine")]


@pytest.fixture(scope="module")
def demo():
    return tinymodels.build_all()


def resident(served, model: str) -> dict:
    return next(r for r in served.ps(stats=True)["residents"] if r["model"] == model)


def chat(served, model: str, **kwargs) -> str:
    reply = served.client().chat.completions.create(model=model, messages=HELLO, max_tokens=8, **kwargs)
    assert reply.choices[0].finish_reason in ("length", "stop")
    return reply.choices[0].message.content


def test_gguf_offloads_every_layer_to_the_gpu(tmp_path, demo):
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python here is a CPU build (scripts/prepare_gpu_wheels.sh builds the CUDA one)")
    entry = {"id": "gguf", "backend": "gguf", "path": str(demo / "tiny-llama.gguf"), "options": {"n_ctx": 512}}
    with serve(tmp_path, [entry], model_dirs=[str(tmp_path), str(demo)]) as served:
        chat(served, "gguf")
        worker = resident(served, "gguf")
        on_gpu = MemoryProbe().process_mb(worker["pid"])
    assert on_gpu is not None and on_gpu > 50, "NVML lists the worker: its CUDA context and offloaded layers"


@pytest.mark.parametrize("fmt", ["fp16", "bnb4", "bnb8", "gptq"])
def test_transformers_formats_generate_on_cuda(tmp_path, demo, fmt):
    if fmt == "gptq" and importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("gptqmodel is not installed here (no binary wheel on PyPI: scripts/prepare_gpu_wheels.sh "
                    "--gptqmodel builds one)")
    with serve(tmp_path, [hf_entry(demo, fmt)], model_dirs=[str(tmp_path), str(demo)]) as served:
        chat(served, f"hf-{fmt}")
        stats = resident(served, f"hf-{fmt}")["worker"]
    assert stats["device"] == "cuda"
    if fmt == "fp16":
        assert stats["dtype"] == "float16" and stats["decode"] == "cuda-graphs"


def test_cuda_graph_decode_starts_like_the_eager_loop(tmp_path, demo):
    models = [{**hf_entry(demo, "fp16", decode=kind), "id": kind} for kind in ("dynamic", "cuda-graphs")]
    with serve(tmp_path, models, model_dirs=[str(tmp_path), str(demo)]) as served:
        client = served.client()
        first = {}
        for kind in ("dynamic", "cuda-graphs"):
            stream = client.chat.completions.create(model=kind, messages=HELLO, max_tokens=16, temperature=0,
                                                    logit_bias={"2": -100}, stream=True)
            pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
            assert len(pieces) >= 8
            first[kind] = pieces[0]
        assert resident(served, "cuda-graphs")["worker"]["decode"] == "cuda-graphs"
    assert first["cuda-graphs"] == first["dynamic"], "the prompt's pass is eager in both: the same first token"


def test_diffusers_makes_fp16_images_on_cuda(tmp_path, demo):
    entry = {"id": "sd", "backend": "diffusers", "path": str(demo / "tiny-sd"),
             "options": {"default_steps": 2, "default_size": "64x64", "min_side": 16}}
    with serve(tmp_path, [entry], model_dirs=[str(tmp_path), str(demo)]) as served:
        image = served.client().images.generate(model="sd", prompt="a fox", size="64x64", response_format="b64_json")
        assert base64.b64decode(image.data[0].b64_json).startswith(b"\x89PNG")
        assert MemoryProbe().process_mb(resident(served, "sd")["pid"]) is not None


def test_ctranslate2_transcribes_in_float16_on_cuda(tmp_path, demo):
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:
        pytest.skip("this CTranslate2 build sees no CUDA device (its wheels link CUDA 12's libraries)")
    entry = {"id": "whisper", "backend": "faster-whisper", "path": str(demo / "tiny-whisper"),
             "options": {"compute_type": "float16", "device": "cuda", "beam_size": 1, "max_new_tokens": 8}}
    with serve(tmp_path, [entry], model_dirs=[str(tmp_path), str(demo)]) as served:
        response = served.http.post("/v1/audio/transcriptions", data={"model": "whisper"},
                                    files={"file": ("a.wav", wav_seconds(2.0))})
        assert response.status_code == 200, response.text
        assert MemoryProbe().process_mb(resident(served, "whisper")["pid"]) is not None


def test_nvml_measures_the_worker_and_the_arbiter_accounts_at_least_that(tmp_path, demo):
    with serve(tmp_path, [hf_entry(demo, "fp16")], model_dirs=[str(tmp_path), str(demo)]) as served:
        chat(served, "hf-fp16")
        worker = resident(served, "hf-fp16")
        measured = MemoryProbe().process_mb(worker["pid"])
    assert measured is not None and measured > 100, "a CUDA context alone is hundreds of MiB"
    assert worker["memory_mb"] >= measured * 0.95


class _HostPids(MemoryProbe):
    """NVML as seen from a container without the host's PID namespace: it lists host pids, never ours."""

    def process_mb(self, pid: int):
        return None if self.gpu else super().process_mb(pid)


def test_a_worker_nvml_cannot_see_is_accounted_from_its_own_report(tmp_path, demo):
    with serve(tmp_path, [hf_entry(demo, "fp16")], model_dirs=[str(tmp_path), str(demo)], probe=_HostPids(),
               worker_overhead_mb=300) as served:
        chat(served, "hf-fp16")
        worker = resident(served, "hf-fp16")
        real = MemoryProbe().process_mb(worker["pid"])
    assert real is not None
    # torch's reserved memory plus the runtime's cost: within a CUDA context's size of what NVML really sees
    assert worker["memory_mb"] >= 300 and abs(worker["memory_mb"] - real) < 1024, (worker["memory_mb"], real)


def test_the_cuda_context_is_given_back_when_a_worker_exits(tmp_path, demo):
    probe = MemoryProbe()
    with serve(tmp_path, [hf_entry(demo, "fp16")], model_dirs=[str(tmp_path), str(demo)]) as served:
        chat(served, "hf-fp16")
        pid = resident(served, "hf-fp16")["pid"]
        held = probe.process_mb(pid)
        before = probe.device_used_mb()
        assert held and served.http.post("/admin/unload", json={"model": "hf-fp16"}).status_code == 200
        deadline = time.monotonic() + 15
        while probe.process_mb(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert probe.process_mb(pid) is None, "NVML still lists the exited worker"
        assert before - probe.device_used_mb() >= held * 0.8
