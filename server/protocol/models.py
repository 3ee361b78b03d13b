"""/v1/models entries: what a model is, can do and costs, honestly, before any load."""

from __future__ import annotations

from typing import Any

from backends.capability import Capability
from backends.plan import LoadPlan

# What a LoRA adapter's id serves (server/registry.py holds requests to it).
ADAPTER_CAPABILITIES = frozenset({Capability.CHAT, Capability.COMPLETION})

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
          name: str | None = None, adapter: str | None = None) -> dict[str, Any]:
    """`status`: resident, loading, draining, unloading, parked (in the warm tier) or unloaded;
    `placement`: the fit-ladder rung it loads at ("full", "context; n_ctx=2048", ...);
    `context_length`: the window allocated at that rung; `max_context_length`: the model's own.
    A LoRA adapter's entry (`adapter`: its name) is its base's, with `base` naming that model: it
    loads, costs and is resident with it. A base lists its adapters' ids under `adapters`."""
    capable = spec.capabilities & ADAPTER_CAPABILITIES if adapter else spec.capabilities
    declared = next((a for a in spec.adapters if a.name == adapter), None)
    out = {
        "id": name or (spec.adapter_names(declared)[0] if declared else spec.id),
        "object": "model",
        "created": created,
        "owned_by": "modelyard",
        "backend": spec.backend,
        "capabilities": capabilities(capable, plan),
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
        "aliases": list(declared.aliases if declared else spec.aliases),
    }
    if declared:
        out.update(base=spec.id, adapter=declared.name, adapter_scale=declared.scale)
    elif spec.adapters:
        out["adapters"] = [spec.adapter_names(a)[0] for a in spec.adapters]
    return out
