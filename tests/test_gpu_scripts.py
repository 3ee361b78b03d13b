"""The GPU tooling that can run without a GPU: the build choice `make setup` makes, the preparation of
the carried wheels, and scripts/gpu_check.sh's whole run at tiny sizes on the CPU (so it cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPTS = ROOT / "scripts"


def fake_tools(tmp_path: Path, gpu: bool, nvcc: bool) -> dict:
    """A PATH whose nvidia-smi sees a GPU (or fails) and which has (or lacks) nvcc."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 4070 Ti'\n" if gpu else "#!/bin/sh\nexit 9\n")
    smi.chmod(0o755)
    if nvcc:
        (bin_dir / "nvcc").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvcc").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "CUDA_HOME": str(tmp_path / "no-cuda"),
            "CUDA_PATH": str(tmp_path / "no-cuda")}


def accelerator(env: dict, mode: str = "auto") -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPTS / "accelerator.sh")], env={**env, "GPU": mode}, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize(("gpu", "nvcc", "mode", "build", "says"), [
    (True, True, "auto", "cuda", "builds with CUDA"),
    (True, False, "auto", "cpu", "no nvcc"),
    (False, True, "auto", "cpu", "no NVIDIA GPU seen"),
    (True, True, "cpu", "cpu", "GPU=cpu"),
    (False, True, "cuda", "cuda", "GPU=cuda"),
])
def test_setup_builds_llama_cpp_with_cuda_when_a_gpu_and_nvcc_are_there(tmp_path, gpu, nvcc, mode, build, says):
    result = accelerator(fake_tools(tmp_path, gpu, nvcc), mode)
    assert result.returncode == 0 and result.stdout.strip() == build
    assert says in result.stderr


def test_gpu_cuda_without_a_toolkit_fails_with_what_to_do(tmp_path):
    result = accelerator(fake_tools(tmp_path, gpu=True, nvcc=False), "cuda")
    assert result.returncode == 1 and "nvcc" in result.stderr and "Docker image" in result.stderr
    assert accelerator(fake_tools(tmp_path, True, True), "metal").returncode == 2


def make_plan(tmp_path: Path, env: dict, gpu: str) -> list[str]:
    """What `make setup` would run (make -n, on a copy: nothing is installed)."""
    copy = tmp_path / "checkout"
    (copy / "scripts").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "scripts/accelerator.sh"):
        (copy / name).write_text((ROOT / name).read_text())
    result = subprocess.run(["make", "-n", "-B", "setup", f"GPU={gpu}"], cwd=copy, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_setup_builds_llama_cpp_with_cuda_and_checks_the_build(tmp_path):
    env = fake_tools(tmp_path, gpu=True, nvcc=True)
    cuda = make_plan(tmp_path, env, "auto")
    install = next(line for line in cuda if "pip install --quiet -e" in line)
    assert install.startswith('CMAKE_ARGS="-DGGML_CUDA=on') and ".[all,dev,gpu]" in install, "nvidia-ml-py too"
    rebuild = next(line for line in cuda if "--no-binary llama-cpp-python" in line)
    assert "llama_supports_gpu_offload()" in rebuild and "--no-cache-dir" in rebuild and "GGML_CUDA=on" in rebuild
    assert any("is built with CUDA" in line for line in cuda)
    assert any(line.endswith(".installed-cuda") for line in cuda)
    cpu = make_plan(tmp_path / "cpu", env, "cpu")
    install = next(line for line in cpu if "pip install --quiet -e" in line)
    assert "GGML_CUDA=on" not in install and ".[all,dev]" in install
    assert any(line.endswith(".installed-cpu") for line in cpu)


def test_wheel_preparation_plans_the_cuda_build_and_the_downloads(tmp_path):
    result = subprocess.run(["bash", str(SCRIPTS / "prepare_gpu_wheels.sh"), "--dry-run", "--llama-bench", "--out",
                             str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    download = next(line for line in out.splitlines() if " pip download " in line)
    assert "--only-binary :all: --python-version 3.12" in download and "manylinux" in download
    import importlib.metadata

    assert f"ctranslate2=={importlib.metadata.version('ctranslate2')}" in download, "pinned to this venv's versions"
    build = next(line for line in out.splitlines() if " pip wheel " in line and "llama-cpp-python" in line)
    for flag in ("-DGGML_CUDA=ON", "-DGGML_CUDA_NO_VMM=ON", "-DCMAKE_CUDA_ARCHITECTURES=90",
                 "-DCUDAToolkit_ROOT=", "-DGGML_NATIVE=OFF"):
        assert flag in build, flag
    assert f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}" in build
    assert "xz" in out and "cuBLAS" in out and "demo-models.tar.xz" in out
    bench = next(line for line in out.splitlines() if line.startswith("+ cmake -S"))
    assert "-DGGML_CUDA=ON" in bench and "-DBUILD_SHARED_LIBS=OFF" in bench and "vendor/llama.cpp" in bench
    assert any("--target llama-bench" in line for line in out.splitlines())
    assert not any(tmp_path.iterdir()) or not list(tmp_path.rglob("*.whl")), "a dry run downloads nothing"


def test_wheels_are_split_into_parts_the_device_tool_can_carry(tmp_path):
    src = tmp_path / "staging"
    src.mkdir()
    sizes = {"a.whl": 45, "b.whl.xz": 40, "c.whl": 14, "d.whl": 12, "e.whl": 1}
    for name, mib in sizes.items():
        with (src / name).open("wb") as fh:
            fh.truncate(mib * 2**20)
    result = subprocess.run(["bash", str(SCRIPTS / "prepare_gpu_wheels.sh"), "--split-only", str(src), "--out",
                             str(tmp_path / "parts")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    parts = sorted((tmp_path / "parts").iterdir())
    placed = [f.name for part in parts for f in part.iterdir()]
    assert sorted(placed) == sorted(sizes)
    for part in parts:
        assert sum(f.stat().st_size for f in part.iterdir()) <= 60 * 2**20, part
    assert len(parts) == 2
    (src / "huge.whl").open("wb").truncate(70 * 2**20)
    refused = subprocess.run(["bash", str(SCRIPTS / "prepare_gpu_wheels.sh"), "--split-only", str(src), "--out",
                              str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHON": sys.executable})
    assert refused.returncode != 0 and "huge.whl" in refused.stderr


def test_gpu_check_dry_run_runs_every_step_at_tiny_sizes(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    summary = (out / "summary.md").read_text()
    assert result.returncode == 0, summary + result.stdout[-4000:]
    for step in ("doctor", "gpu-tests", "models", "promise", "estimates", "decode"):
        assert f"**{step}**: ok" in summary, step
    suite = ET.parse(out / "gpu-tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 10 and int(suite.get("skipped")) == int(suite.get("tests"))

    estimates = json.loads((out / "estimates.json").read_text())
    assert {r["backend"] for r in estimates["rows"]} == {"gguf", "hf", "diffusers", "faster-whisper"}
    assert all(r["status"] == 200 and r["estimate_mb"] > 0 and r["measured_peak_mb"] > 0 for r in estimates["rows"])

    promise = json.loads((out / "promise.json").read_text())
    assert promise["requests"] > 0 and promise["answered_200"] == promise["requests"], promise["failed"]
    assert promise["oom_errors"] == 0 and promise["evictions"] >= 1, "the budget forced swapping"
    assert promise["swaps"] >= len({r["model"] for r in promise["results"]})
    assert sum(promise["estimates_mb"].values()) > promise["budget_mb"] and promise["samples"] > 50
    # (No peak-vs-budget verdict on a CPU: a worker's RSS counts torch's shared libraries, ~700 MiB that are
    # no part of any estimate; on a GPU NVML counts device memory, which the estimates describe.)
    assert promise["peak_workers_mb"] > 0

    decode = json.loads((out / "decode.json").read_text())["rates"]
    assert decode["gguf served (modelyard)"] > 0
    for model in ("llama-1b-fp16", "llama-7b-nf4"):
        assert {f"{model} generate", f"{model} loop/dynamic", f"{model} loop/static"} <= set(decode)
    assert "machine:" in summary and "| budget MiB |" in summary
