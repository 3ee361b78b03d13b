"""/v1/models entries: what a model is, can do and costs, honestly, before any load."""

from __future__ import annotations

from typing import Any

from backends.capability import Capability
from backends.plan import LoadPlan

# What editors and UIs read as the model's lifecycle; `status` keeps the arbiter's finer word.
STATE = {"resident": "loaded", "loading": "loading", "draining": "unloading", "unloading": "unloading",
         "parked": "parked", "unloaded": "unloaded"}


def capabilities(capable: frozenset[Capability], plan: LoadPlan) -> list[str]:
    """The routes a model serves, plus what its chat and completions accept: every chat model takes
    tools (its own syntax, else the JSON mode), a completion model with FIM tokens takes a suffix."""
    names = {c.value for c in capable}
    if Capability.CHAT in capable:
        names.add("tools")
    if Capability.COMPLETION in capable and plan.fim:
        names.add("fim")
    return sorted(names)


def entry(spec, created: int, status: str, plan: LoadPlan, memory_mb: float, placement: str,
          name: str | None = None) -> dict[str, Any]:
    """`status`: resident, loading, draining, unloading, parked (in the warm tier) or unloaded;
    `placement`: the fit-ladder rung it loads at ("full", "context; n_ctx=2048", ...);
    `context_length`: the window allocated at that rung; `max_context_length`: the model's own."""
    return {
        "id": name or spec.id,
        "object": "model",
        "created": created,
        "owned_by": "modelyard",
        "backend": spec.backend,
        "capabilities": capabilities(spec.capabilities, plan),
        "context_length": plan.context_length,
        "max_context_length": plan.max_context_length,
        "max_model_len": plan.context_length,  # vLLM's name, which some clients read
        "tool_format": plan.tool_format,  # the tool-call syntax calls are read in (backends/tools.py)
        "memory_estimate_mb": round(memory_mb, 1),
        "state": STATE.get(status, status),
        "status": status,
        "resident": status == "resident",
        "parked": status == "parked",
        "placement": placement,
        "aliases": list(spec.aliases),
    }
