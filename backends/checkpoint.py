"""A Hugging Face checkpoint directory as every transformers engine loads it: from local files only,
safetensors only, never running code that ships with the model (hardening item 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAFE = {"local_files_only": True, "trust_remote_code": False}  # for every from_pretrained


def check_directory(path: Path) -> None:
    """Refuse, with a clear reason, a directory transformers cannot load safely."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    if not list(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} has no .safetensors weights (pickle checkpoints are refused)")


def load(cls: Any, path: Path, dtype: str, device: str) -> Any:
    """`cls.from_pretrained` under the rules above, in `dtype` on `device`, in eval mode."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was planned but torch sees no CUDA device")
    check_directory(path)
    model = cls.from_pretrained(path, **SAFE, use_safetensors=True, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def load_with_processor(model_cls: Any, processor_cls: Any, plan: Any) -> tuple[Any, Any]:
    """A model and its processor (or tokenizer) from one planned directory."""
    model = load(model_cls, plan.path, plan.dtype, plan.device)
    return model, processor_cls.from_pretrained(plan.path, **SAFE)


def weights_mb(model: Any) -> float:
    """What a loaded torch model's parameters hold."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / (1024 * 1024)


def config(path: Path) -> dict[str, Any]:
    """config.json, or {} when it is missing or broken (the load then says what is wrong)."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))
