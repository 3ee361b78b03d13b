"""A parked model's directory in the warm tier: copying a model's files into it and sizing it.

Adapters whose loaded form is what is on disk (GPTQ, CTranslate2) park by copying their files;
the others write their loaded form (server/warm.py owns the directory and its lifetime).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_files(source: Path, dest: Path) -> int:
    """Copy every regular file under `source` into `dest` (keeping the layout); the bytes copied."""
    for file in sorted(source.rglob("*")):
        if file.is_file():
            target = dest / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return size_of(dest)


def size_of(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
