"""Tiny random models in real formats (GGUF, HF, GPTQ, diffusers, Whisper), built once and cached.

They make `make serve` work offline and give the tests real files to load through the real
engines. Random weights: the output is meaningless, the code path is the one a 7B model takes.
"""

from __future__ import annotations

import importlib
from pathlib import Path

DEFAULT_ROOT = Path("~/.cache/modelyard/demo").expanduser()

# Each builder module has build(root: Path) -> None, idempotent, atomic per model.
BUILDERS = ("tinymodels.gguf", "tinymodels.hf", "tinymodels.media", "tinymodels.speech", "tinymodels.onnx")


def build_all(root: Path = DEFAULT_ROOT) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in BUILDERS:
        importlib.import_module(name).build(root)
    return root
