"""Tensor names, dtypes and sizes from .safetensors headers, without reading a weight (or importing torch)."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

from backends.plan import MIB

# Bytes per element of the safetensors dtypes.
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
               "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FLOATS = ("F16", "BF16", "F32", "F64")


def header(file: Path) -> dict[str, tuple[str, int]]:
    """name -> (dtype, element count) from one .safetensors header."""
    with file.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length <= 0 or length > 100 * MIB:
            raise ValueError(f"{file}: not a safetensors file (header size {length})")
        entries = json.loads(fh.read(length))
    return {name: (meta["dtype"], math.prod(int(d) for d in meta["shape"]))
            for name, meta in entries.items() if name != "__metadata__"}


def tensors(files: Iterable[Path]) -> dict[str, tuple[str, int]]:
    """Every tensor of these checkpoints; an unreadable file counts as its raw bytes (the worker's
    load then reports what is wrong with it)."""
    found: dict[str, tuple[str, int]] = {}
    for file in files:
        try:
            found.update(header(file))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
            found[f"{file.name}:unreadable"] = ("U8", file.stat().st_size if file.exists() else 0)
    return found


def parameters(file: Path) -> dict[str, int]:
    """Element counts per dtype in one .safetensors file."""
    counts: dict[str, int] = {}
    for dtype, count in header(file).values():
        counts[dtype] = counts.get(dtype, 0) + count
    return counts


def bytes_at(files: Iterable[Path], float_bytes: int) -> float:
    """Weights as they sit in memory when floats run at `float_bytes` each (integers as stored)."""
    total = 0.0
    for dtype, count in tensors(files).values():
        floating = dtype.startswith(("F", "BF"))  # fp8 too: pipelines upcast it at load
        total += count * (float_bytes if floating else DTYPE_BYTES.get(dtype, 4))
    return total
