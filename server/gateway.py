"""What the Gateway API Inference Extension's endpoint picker (EPP) reads from a model server.

Its model-server protocol asks for a queue length, the requests running, the KV-cache utilisation
(0..1) and the LoRA adapters loaded (`running_lora_adapters` / `waiting_lora_adapters` / `max_lora`
labels on an info gauge whose value is a timestamp). modelyard maps them onto what it has:

- queue: requests waiting for a model lease (`modelyard_num_requests_waiting`, already exported);
- running: requests holding a lease, i.e. being served (`modelyard_num_requests_serving`);
- KV cache: decode slots in use over the slots of the resident text models (a GGUF model has
  n_parallel slots sharing its KV pool, a transformers model one), so a replica whose models are all
  busy reads full and one with idle models reads empty;
- adapters: the names (ids and aliases) of the resident models, and of the models requests wait for.
  The EPP's LoRA-affinity scorer then prefers the replica where the requested model is resident,
  which is the routing a fleet of arbiters needs; `max_lora` is the registry's size (residency is
  bounded by memory, not by a count).

Computed from the arbiter's snapshot when scraped (the EPP polls every ~50 ms): no bookkeeping of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from backends.capability import Capability
from backends.plan import LoadPlan
from backends.spec import BaseSpec

KV_USAGE = "modelyard_kv_cache_usage_ratio"
SERVING = "modelyard_num_requests_serving"
MODELS_INFO = "modelyard_resident_models_info"
_TEXT = {Capability.CHAT, Capability.COMPLETION}


@dataclass(frozen=True)
class Occupancy:
    serving: int = 0
    slots_used: int = 0
    slots: int = 0
    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    max_models: int = 0

    @property
    def kv_usage(self) -> float:
        return self.slots_used / self.slots if self.slots else 0.0


def decode_slots(spec: BaseSpec, plan: LoadPlan) -> int:
    """Sequences a resident text model decodes at once (0 for a model that keeps no KV cache)."""
    if not spec.capabilities & _TEXT:
        return 0
    return int(getattr(plan, "n_parallel", 1))


def occupancy(snapshot: dict[str, Any], specs: dict[str, BaseSpec], plan_of: Callable[[BaseSpec], LoadPlan]
              ) -> Occupancy:
    serving = used = slots = 0
    running: list[str] = []
    waiting: list[str] = []
    for resident in snapshot["residents"]:
        spec = specs[resident["model"]]
        serving += resident["refcount"]
        if resident["state"] in ("ready", "draining"):
            running.extend(spec.names)
            n = decode_slots(spec, plan_of(spec))
            slots += n
            used += min(resident["refcount"], n)
        elif resident["state"] == "loading":
            waiting.extend(spec.names)
    for model in snapshot.get("wanted", ()):
        if model in specs and model not in running:
            waiting.extend(n for n in specs[model].names if n not in waiting)
    return Occupancy(serving, used, slots, tuple(running), tuple(waiting), len(specs))


class GatewayCollector:
    """Exports an Occupancy read at scrape time."""

    def __init__(self, read: Callable[[], Occupancy]):
        self._read = read

    def describe(self):
        return []  # values exist only when scraped

    def collect(self):
        o = self._read()
        kv = GaugeMetricFamily(KV_USAGE, "Decode slots in use over the slots of the resident text models (0..1); "
                               "the inference gateway's KV-cache utilisation.")
        kv.add_metric([], o.kv_usage)
        serving = GaugeMetricFamily(SERVING, "Requests holding a model lease (being served, not waiting).")
        serving.add_metric([], o.serving)
        info = GaugeMetricFamily(MODELS_INFO, "Names of the resident models and of those requests wait for, in the "
                                 "inference gateway's LoRA-info form; the value is the time it was read.",
                                 labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora"])
        info.add_metric([",".join(o.running), ",".join(o.waiting), str(o.max_models)], time.time())
        yield from (kv, serving, info)
