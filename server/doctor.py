"""`modelyard doctor`: what this install sees: the GPU and its driver, free memory, which engines can
use the GPU here, the budget and device the server would use, the registry and the Hub settings."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from server.memory import MIB, MemoryProbe, cuda_visible, default_budget_mb, detect_device
from server.settings import Settings

# (engine package, distribution): the packages each backend needs, as pip names them.
ENGINES = {"gguf": ("llama_cpp", "llama-cpp-python"), "hf": ("transformers", "transformers"),
           "bnb": ("bitsandbytes", "bitsandbytes"), "gptq": ("gptqmodel", "gptqmodel"),
           "diffusers": ("diffusers", "diffusers"), "faster-whisper": ("ctranslate2", "ctranslate2")}


def report(settings: Settings) -> dict[str, Any]:
    probe = MemoryProbe()
    device = detect_device(probe, settings.worker_overhead_mb)
    budget = settings.budget_mb or default_budget_mb(probe)
    return {
        "python": platform.python_version(),
        "gpu": gpu(),
        "device": device.kind,
        "budget_mb": budget,
        "budget_source": "MODELYARD_BUDGET_MB" if settings.budget_mb else "default",
        "worker_runtime_mb": device.runtime_mb,
        "engines": engines(),
        "registry": registry(settings),
        "hub": hub(),
    }


def gpu() -> dict[str, Any] | None:
    """The first NVIDIA GPU as NVML sees it, None when there is none (or NVML is not installed)."""
    try:
        import pynvml
    except ImportError:
        return {"error": "nvidia-ml-py is not installed (pip install 'modelyard[gpu]')"} if cuda_visible() else None
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return {"error": f"NVML did not start: {exc}"} if cuda_visible() else None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {"name": name.decode() if isinstance(name, bytes) else name,
                "driver": driver.decode() if isinstance(driver, bytes) else driver,
                "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}", "count": pynvml.nvmlDeviceGetCount(),
                "total_mb": round(memory.total / MIB), "free_mb": round(memory.free / MIB),
                "used_mb": round(memory.used / MIB)}
    finally:
        pynvml.nvmlShutdown()


def engines() -> dict[str, dict[str, Any]]:
    """Each backend's package version and whether it can run on the GPU in this install."""
    found: dict[str, dict[str, Any]] = {}
    torch_cuda = _torch_cuda()
    for engine, (module, dist) in ENGINES.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[engine] = {"installed": False, "gpu": False}
            continue
        entry: dict[str, Any] = {"installed": True, "version": version}
        try:
            entry["gpu"] = _gpu_support(engine, module, torch_cuda)
        except Exception as exc:  # a broken install: say so rather than fail the whole report
            entry.update(gpu=False, error=f"{type(exc).__name__}: {exc}")
        found[engine] = entry
    found["torch"] = torch_cuda
    return found


def _torch_cuda() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"installed": False, "gpu": False}
    return {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
            "gpu": bool(torch.cuda.is_available())}


def _gpu_support(engine: str, module: str, torch_cuda: dict[str, Any]) -> bool:
    if engine == "gguf":
        llama_cpp = importlib.import_module(module)
        return bool(llama_cpp.llama_supports_gpu_offload())  # False for a CPU-only build, GPU or not
    if engine == "faster-whisper":
        return importlib.import_module(module).get_cuda_device_count() > 0
    return bool(torch_cuda.get("gpu"))  # the transformers family runs on torch's CUDA


def registry(settings: Settings) -> dict[str, Any]:
    from server.app import allowed_model_dirs
    from server.registry import RegistryError, load_registry

    path = Path(settings.models)
    try:
        found = load_registry(path, allowed_model_dirs(settings))
    except RegistryError as exc:
        return {"path": str(path), "ok": False, "error": str(exc)}
    return {"path": str(path), "ok": True, "models": len(found)}


def hub() -> dict[str, Any]:
    from huggingface_hub import constants

    return {"endpoint": constants.ENDPOINT, "cache": constants.HF_HUB_CACHE,
            "offline": os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false"),
            "token": bool(os.environ.get("HF_TOKEN") or Path(constants.HF_TOKEN_PATH).is_file())}


def render(facts: dict[str, Any]) -> str:
    lines = []
    card = facts["gpu"]
    if card is None:
        lines.append("GPU:      none visible (models run on the CPU)")
    elif "error" in card:
        lines.append(f"GPU:      {card['error']}")
    else:
        lines.append(f"GPU:      {card['name']} x{card['count']}, driver {card['driver']} (CUDA {card['cuda_driver']}), "
                     f"{card['free_mb']} of {card['total_mb']} MiB free")
    lines.append(f"device:   models load on {facts['device']}; a worker's runtime counts {facts['worker_runtime_mb']:.0f} MiB")
    lines.append(f"budget:   {facts['budget_mb']} MiB ({facts['budget_source']})")
    lines.append("engines:")
    for name, entry in facts["engines"].items():
        if not entry.get("installed"):
            lines.append(f"  {name:15} not installed")
            continue
        where = "GPU" if entry["gpu"] else "CPU only"
        extra = f" (CUDA {entry['cuda_build']})" if entry.get("cuda_build") else ""
        error = f" [{entry['error']}]" if entry.get("error") else ""
        lines.append(f"  {name:15} {entry['version']:12} {where}{extra}{error}")
    reg = facts["registry"]
    lines.append(f"registry: {reg['path']}: " + (f"{reg['models']} models" if reg["ok"] else reg["error"]))
    hub_facts = facts["hub"]
    lines.append(f"hub:      {hub_facts['endpoint']}, cache {hub_facts['cache']}, token {'set' if hub_facts['token'] else 'none'}"
                 + (", HF_HUB_OFFLINE set (pull goes online anyway)" if hub_facts["offline"] else ""))
    gguf = facts["engines"].get("gguf", {})
    if card and "error" not in card and gguf.get("installed") and not gguf.get("gpu"):
        lines.append("note:     llama-cpp-python was built without CUDA: rebuild it with `make setup GPU=cuda` "
                     "(needs the CUDA toolkit's nvcc)")
    return "\n".join(lines)
