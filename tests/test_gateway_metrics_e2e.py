"""The inference gateway's view of a replica (server/gateway.py), scraped from /metrics while requests run:
queue, requests being served, KV-cache utilisation as decode-slot occupancy, resident models as adapters."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import fake, serve
from exposition import scrape

import tinymodels
from server import gateway

HELLO = [{"role": "user", "content": "hello"}]


def models_info(m) -> dict[str, str]:
    (labels,) = [dict(k[1]) for k in m.samples if k[0] == gateway.MODELS_INFO]
    return labels


def test_idle_replica_reads_empty(tmp_path):
    with serve(tmp_path, [fake("a"), fake("b")]) as s:
        m = scrape(s)
        assert m.value(gateway.KV_USAGE) == 0 and m.value(gateway.SERVING) == 0
        assert m.value("modelyard_num_requests_waiting") == 0
        assert models_info(m) == {"running_lora_adapters": "", "waiting_lora_adapters": "", "max_lora": "2"}
        assert abs(m.value(gateway.MODELS_INFO, **models_info(m)) - time.time()) < 60, "the value is a timestamp"


def test_busy_and_loading_models_show_as_kv_use_serving_and_adapters(tmp_path):
    demo = tinymodels.build_all()
    models = [fake("slow", token_latency_s=0.05, spec_aliases=["gpt-4o-mini"]),
              fake("late", load_seconds=3.0),
              {"id": "gguf", "backend": "gguf", "path": str(demo / "tiny-llama.gguf"),
               "options": {"n_ctx": 512, "n_parallel": 4}}]
    with serve(tmp_path, models, model_dirs=[str(tmp_path), str(demo)], budget_mb=8192) as s:
        client = s.client()
        client.chat.completions.create(model="gguf", messages=HELLO, max_tokens=2)  # resident, idle: 4 free slots
        stream = client.chat.completions.create(model="slow", messages=HELLO, max_tokens=60, stream=True)
        next(iter(stream))
        loading = threading.Thread(target=lambda: client.chat.completions.create(model="late", messages=HELLO,
                                                                                 max_tokens=1))
        loading.start()
        try:
            s.wait_until(lambda: (s.arbiter.loading() or {}).get("model") == "late")
            m = scrape(s)
            assert m.value(gateway.SERVING) == 1, "the stream holds a lease; the request for `late` waits"
            assert m.value("modelyard_num_requests_waiting") == 1
            assert m.value(gateway.KV_USAGE) == pytest.approx(1 / 5), "1 of slow's 1 + gguf's 4 decode slots"
            info = models_info(m)
            assert set(info["running_lora_adapters"].split(",")) == {"slow", "gpt-4o-mini", "gguf"}
            assert info["waiting_lora_adapters"] == "late" and info["max_lora"] == "3"
        finally:
            stream.close()
            loading.join(30)
        m = scrape(s)
        assert "late" in models_info(m)["running_lora_adapters"] and models_info(m)["waiting_lora_adapters"] == ""


def test_occupancy_counts_only_text_models_slots():
    from backends.plan import Device
    from server.registry import parse_spec

    specs = {s.id: s for s in (parse_spec(fake("t")), parse_spec(fake("u")))}
    snapshot = {"residents": [{"model": "t", "state": "ready", "refcount": 3},
                              {"model": "u", "state": "draining", "refcount": 0}], "wanted": ["u"]}
    o = gateway.occupancy(snapshot, specs, lambda spec: spec.resolve(Device()))
    assert (o.serving, o.slots_used, o.slots, o.kv_usage) == (3, 1, 2, 0.5)
    assert o.running == ("t", "u") and o.waiting == ()
