"""What only a GPU can prove about the scheduler: a parked model gives back its whole device
footprint, CUDA context included; a resume from RAM lands on the device; the offload and CPU rungs
place models as planned. Skipped, saying why, where no CUDA device is visible; a lent GPU machine
runs them with scripts/gpu_check.sh."""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import fake, worker_processes

from server.memory import MIB, MemoryProbe, cuda_visible
from tinymodels import build_all

PROBE = MemoryProbe()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (cuda_visible() and PROBE.gpu),
                       reason="no CUDA device visible (NVML): run on a GPU machine with scripts/gpu_check.sh"),
]
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def models_root():
    return build_all()


def device_used_mb() -> float:
    return PROBE._nvml.nvmlDeviceGetMemoryInfo(PROBE._handle).used / MIB


def settled_used_mb(timeout: float = 10.0) -> float:
    """Device memory in use once it stops moving (the driver frees a context asynchronously)."""
    last, deadline = device_used_mb(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = device_used_mb()
        if abs(now - last) < 2:
            return now
        last = now
    return last


def test_a_parked_torch_model_gives_back_its_whole_device_footprint_cuda_context_included(served, models_root,
                                                                                        tmp_path):
    files = tmp_path / "tiny-hf"
    shutil.copytree(models_root / "tiny-hf", files)
    entry = {"id": "hf", "backend": "hf", "path": str(files), "keep_alive": 0, "options": {"device": "cuda"}}
    with served([entry], ram_budget_mb=4096, budget_mb=8192, worker_overhead_mb=None) as s:
        before = settled_used_mb()
        client = s.client()
        client.chat.completions.create(model="hf", messages=HELLO, max_tokens=4)
        s.wait_until(lambda: any(p["model"] == "hf" for p in s.ps()["parked"]), timeout=60)
        after = settled_used_mb()
        assert after - before < 32, f"{after - before:.0f} MiB still held on the device after parking"
        on_device = {p.pid for p in PROBE._nvml.nvmlDeviceGetComputeRunningProcesses(PROBE._handle)}
        assert not on_device & {p.pid for p in worker_processes()}  # no worker of ours holds a context
        shutil.move(files, tmp_path / "moved")
        reply = client.chat.completions.create(model="hf", messages=HELLO, max_tokens=4)
        assert reply.choices[0].message.content is not None  # loaded from RAM onto the GPU


def test_a_resumed_model_is_on_the_gpu_and_its_swap_in_comes_from_ram(served, models_root):
    entry = {"id": "hf", "backend": "hf", "path": str(models_root / "tiny-hf"), "keep_alive": 0,
             "options": {"device": "cuda"}}
    with served([entry], ram_budget_mb=4096, budget_mb=8192, worker_overhead_mb=None) as s:
        client = s.client()
        client.chat.completions.create(model="hf", messages=HELLO, max_tokens=1)
        s.wait_until(lambda: any(p["model"] == "hf" for p in s.ps()["parked"]), timeout=60)
        stream = client.chat.completions.create(model="hf", messages=HELLO, max_tokens=64, stream=True)
        next(iter(stream))
        resident = s.resident("hf")
        assert resident["source"] == "ram"
        assert PROBE.process_mb(resident["pid"]) is not None  # NVML sees the resumed worker on the device
        list(stream)


def test_a_diffusers_pipeline_too_large_for_the_budget_runs_with_model_cpu_offload(served, models_root):
    entry = {"id": "sd", "backend": "diffusers", "path": str(models_root / "tiny-sd"), "fit": ["offload"],
             "options": {"default_steps": 2, "default_size": "32x32", "min_side": 16, "device": "cuda"}}
    with served([entry], worker_overhead_mb=300) as s:
        full = s.http.get("/admin/plan", params={"model": "sd"}).json()["ladder"][0]["need_mb"]
    with served([entry], worker_overhead_mb=300, budget_mb=int(full) - 1) as s:
        response = s.http.post("/v1/images/generations", json={"model": "sd", "prompt": "a fox", "size": "32x32",
                                                                "response_format": "b64_json"})
        assert response.status_code == 200 and response.headers["x-modelyard-placement"] == "offload; model_cpu_offload"


def test_the_cpu_rung_beside_a_gpu_opens_no_cuda_context(served):
    with served([fake("big", memory_mb=5000, spec_fit=["cpu"])], budget_mb=1000) as s:
        response = s.http.post("/v1/chat/completions", json={"model": "big", "messages": HELLO, "max_tokens": 2})
        assert response.headers["x-modelyard-placement"] == "cpu"
        assert PROBE.process_mb(s.resident("big")["pid"]) is None and s.ps()["used_mb"] == 0


def test_a_gguf_too_large_for_the_budget_is_split_between_gpu_and_cpu(served, models_root, tmp_path):
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has no GPU offload (build it with GGML_CUDA=ON)")
    from tinymodels.gguf import write_llama

    path = tmp_path / "six.gguf"
    write_llama(path, vocab=512, dim=256, layers=6, heads=4, context=4096)
    entry = {"id": "six", "backend": "gguf", "path": str(path), "fit": ["offload"], "options": {"n_ctx": 4096}}
    with served([entry], worker_overhead_mb=300) as s:
        ladder = s.http.get("/admin/plan", params={"model": "six"}).json()["ladder"]
    budget = int((ladder[0]["need_mb"] + 300 + 48) / 2)  # between the output layer alone and the whole model
    with served([entry], worker_overhead_mb=300, budget_mb=budget) as s:
        response = s.http.post("/v1/chat/completions", json={"model": "six", "messages": HELLO, "max_tokens": 2})
        assert response.headers["x-modelyard-placement"].startswith("offload; n_gpu_layers=")
        assert PROBE.process_mb(s.resident("six")["pid"]) <= budget
