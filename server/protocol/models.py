"""/v1/models entries."""

from __future__ import annotations

from typing import Any


def entry(spec, created: int, status: str, context_length: int | None, placement: str,
          name: str | None = None) -> dict[str, Any]:
    """`status`: resident, loading, draining, unloading, parked (in the warm tier) or unloaded;
    `placement`: the fit-ladder rung it loads at ("full", "context; n_ctx=2048", ...)."""
    return {
        "id": name or spec.id,
        "object": "model",
        "created": created,
        "owned_by": "modelyard",
        "backend": spec.backend,
        "capabilities": sorted(c.value for c in spec.capabilities),
        "max_model_len": context_length,
        "resident": status == "resident",
        "parked": status == "parked",
        "status": status,
        "placement": placement,
        "aliases": list(spec.aliases),
    }
