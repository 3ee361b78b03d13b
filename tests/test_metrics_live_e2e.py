"""The running and waiting gauges while requests are in flight (its own module: the shared server
of test_metrics_e2e.py would still hold workers when this one stops)."""

from __future__ import annotations

import threading

from conftest import fake
from exposition import scrape

HELLO = [{"role": "user", "content": "hello there"}]


def chat(client, model, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.create(model=model, messages=HELLO, **kwargs)


def test_running_and_waiting_gauges_follow_live_requests(served):
    models = [fake("slow", memory_mb=600, token_latency_s=0.05), fake("other", memory_mb=600)]
    with served(models, budget_mb=1000, max_wait_s=0) as s:  # no aging allowance: slow drains at once
        client = s.client()
        stream = chat(client, "slow", max_tokens=30, stream=True)
        next(iter(stream))
        assert scrape(s).value("modelyard_num_requests_running") == 1
        waiter = threading.Thread(target=chat, args=(client, "other"))
        waiter.start()  # "other" needs slow's memory: it waits while slow drains
        s.wait_until(lambda: scrape(s).value("modelyard_num_requests_waiting") == 1)
        assert scrape(s).value("modelyard_num_requests_running") == 2
        list(stream)
        waiter.join(20)
        m = scrape(s)
        assert m.value("modelyard_num_requests_waiting") == 0
        assert m.value("modelyard_num_requests_running") == 0
        assert m.value("modelyard_model_evictions_total", model="slow", reason="drained") == 1
        assert m.value("modelyard_queue_wait_seconds_count", model="other") == 1
