"""Tiny random models in real formats (GGUF, HF, GPTQ, diffusers, Whisper), built once and cached.

They make `make serve` work offline and give the tests real files to load through the real
engines. Random weights: the output is meaningless, the code path is the one a 7B model takes.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

DEFAULT_ROOT = Path("~/.cache/modelyard/demo").expanduser()

# Each builder module has build(root: Path) -> None, idempotent, atomic per model.
BUILDERS = ("tinymodels.gguf", "tinymodels.hf", "tinymodels.media", "tinymodels.speech", "tinymodels.onnx",
            "tinymodels.vision", "tinymodels.lora")


def build_all(root: Path = DEFAULT_ROOT) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in BUILDERS:
        importlib.import_module(name).build(root)
    return root


def is_current(target: Path, version: int) -> bool:
    """`target` exists and was built by this version of its recipe (version 1 needs no stamp, so
    caches from before stamps stay valid)."""
    return target.exists() and (version == 1 or stamp(target, version).exists())


def build_dir(target: Path, make: Callable[[Path], None], version: int = 1) -> None:
    """Build a model directory into a sibling temp dir, then swap it in: a half-built model is never
    seen at `target`. A copy from an older recipe is replaced."""
    if is_current(target, version):
        return
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        make(work)
        _swap(work, target)
        if version > 1:
            stamp(target, version).touch()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _swap(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.replace(target, old / "model")
    try:
        os.replace(new, target)
    except OSError:
        if not target.exists():  # else another process finished the same model first: keep theirs
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def stamp(target: Path, version: int) -> Path:
    return target.parent / f".{target.name}.v{version}"
