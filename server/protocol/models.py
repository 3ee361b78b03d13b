"""/v1/models entries."""

from __future__ import annotations

from typing import Any


def entry(spec, created: int, resident: bool, context_length: int | None, name: str | None = None) -> dict[str, Any]:
    return {
        "id": name or spec.id,
        "object": "model",
        "created": created,
        "owned_by": "modelyard",
        "backend": spec.backend,
        "capabilities": sorted(c.value for c in spec.capabilities),
        "max_model_len": context_length,
        "resident": resident,
        "aliases": list(spec.aliases),
    }
