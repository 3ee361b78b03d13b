"""The arbiter wired into the real app, real worker processes and the openai client.

Each rule of the arbiter has its own unit test in test_arbiter.py (fake workers and clock); these
prove the wiring: leases that span HTTP streams, status codes and headers, real processes
started, killed and reaped, timers on the real event loop, and a randomized load on the whole."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import fake

HELLO = [{"role": "user", "content": "hello there"}]


def chat(client, model, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.create(model=model, messages=HELLO, **kwargs)


def test_same_model_reuses_its_worker(served):
    with served([fake("a")]) as s:
        client = s.client()
        chat(client, "a")
        pid = s.resident("a")["pid"]
        for _ in range(3):
            chat(client, "a")
        assert s.resident("a")["pid"] == pid
        assert s.arbiter.loads == 1


def test_model_that_does_not_fit_evicts_an_idle_one(served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600)], budget_mb=1000) as s:
        client = s.client()
        chat(client, "a")
        chat(client, "b")
        models = {r["model"] for r in s.ps()["residents"]}
        assert models == {"b"}
        assert s.ps()["evictions"] == {"capacity": 1}
        assert s.arbiter.peak_mb <= 1000


def test_busy_victim_drains_and_waiter_is_served_after(served):
    models = [fake("slow", memory_mb=600, token_latency_s=0.05), fake("other", memory_mb=600)]
    with served(models, budget_mb=1000, max_wait_s=0) as s:  # no aging allowance: drain at once
        client = s.client()
        stream = chat(client, "slow", max_tokens=20, stream=True)
        next(iter(stream))  # "slow" is now serving
        finished_at = {}

        def other():
            chat(client, "other")
            finished_at["other"] = time.monotonic()

        waiter = threading.Thread(target=other)
        waiter.start()
        s.wait_until(lambda: s.resident("slow")["state"] == "draining")
        assert s.resident("other") is None  # it waits; the busy model is not evicted under its stream
        chunks = list(stream)
        stream_done = time.monotonic()
        waiter.join(10)
        assert chunks[-1].choices[0].finish_reason == "length"
        assert finished_at["other"] >= stream_done - 0.05
        assert s.ps()["evictions"] == {"drained": 1}
        assert s.arbiter.peak_mb <= 1000


def test_keep_alive_zero_unloads_on_release(served):
    with served([fake("a")]) as s:
        chat(s.client(), "a", extra_body={"keep_alive": 0})
        s.wait_until(lambda: s.resident("a") is None, timeout=5)
        assert s.ps()["evictions"] == {"keep_alive": 1}


def test_model_keep_alive_expires_idle_model(served):
    with served([fake("a", spec_keep_alive="300ms")]) as s:
        chat(s.client(), "a")
        assert s.resident("a") is not None
        s.wait_until(lambda: s.resident("a") is None, timeout=5)


def test_pinned_model_loads_at_start_and_is_never_evicted(served):
    models = [fake("pinned", memory_mb=500, spec_pinned=True), fake("a", memory_mb=400), fake("b", memory_mb=400)]
    with served(models, budget_mb=1000) as s:
        s.wait_until(lambda: s.resident("pinned") is not None and s.resident("pinned")["state"] == "ready")
        assert s.resident("pinned")["expires_in_s"] is None
        client = s.client()
        for name in ("pinned", "a", "b", "a"):
            chat(client, name)
        assert {r["model"] for r in s.ps()["residents"]} == {"pinned", "a"}


def test_model_larger_than_budget_is_400_and_evicts_nothing(served):
    with served([fake("small", memory_mb=300), fake("huge", memory_mb=5000)], budget_mb=1000) as s:
        client = s.client()
        chat(client, "small")
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, "huge")
        assert caught.value.code == "model_too_large"
        assert s.resident("small") is not None
        assert s.arbiter.loads == 1


def test_full_queue_gives_503_with_retry_after(served):
    models = [fake("slow", memory_mb=300, load_seconds=1.5)]
    with served(models, max_queue=2) as s, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(chat, s.client(), "slow") for _ in range(2)]
        s.wait_until(lambda: s.ps()["waiting"] == 2)
        response = s.http.post("/v1/chat/completions", json={"model": "slow", "messages": HELLO})
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit() and int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "queue_full"
        for future in waiting:
            assert future.result(10).choices[0].message.content


def test_load_error_reaches_caller_and_next_load_works(served, tmp_path):
    marker = tmp_path / "broken"
    marker.write_text("")
    with served([fake("flaky", fail_load_while_exists=str(marker)), fake("fine")]) as s:
        client = s.client()
        with pytest.raises(openai.InternalServerError) as caught:
            chat(client, "flaky")
        assert caught.value.code == "model_load_failed"
        assert "weights unreadable" in caught.value.message
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert chat(client, "fine").choices[0].message.content  # other models keep serving
        marker.unlink()
        assert chat(client, "flaky").choices[0].message.content
        assert s.ps()["used_mb"] == sum(r["memory_mb"] for r in s.ps()["residents"])


def test_load_timeout_fails_the_request_and_frees_the_slot(served):
    with served([fake("stuck", hang_load=True), fake("fine")], load_timeout_s=1) as s:
        client = s.client()
        with pytest.raises(openai.APIStatusError) as caught:
            chat(client, "stuck")
        assert caught.value.status_code == 503 and caught.value.code == "model_load_timeout"
        assert chat(client, "fine").choices[0].message.content
        assert s.resident("stuck") is None


def test_worker_killed_mid_stream_gives_error_event_and_server_recovers(served):
    with served([fake("a", token_latency_s=0.05)]) as s:
        client = s.client()
        stream = chat(client, "a", max_tokens=100, stream=True)
        iterator = iter(stream)
        next(iterator)
        next(iterator)
        pid = s.resident("a")["pid"]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIError) as caught:
            list(iterator)
        assert "crashed" in str(caught.value)
        assert s.http.get("/health").status_code == 200
        assert chat(client, "a").choices[0].message.content
        assert s.resident("a")["pid"] != pid
        assert s.ps()["evictions"] == {"crashed": 1}


def test_native_abort_mid_stream_ends_with_error_event_then_done(served):
    with served([fake("a", crash_after_tokens=3)]) as s:
        body = {"model": "a", "messages": HELLO, "max_tokens": 50, "stream": True}
        with s.http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line]
        assert events[-1] == "data: [DONE]"
        assert '"error"' in events[-2] and "worker_crashed" in events[-2]
        assert s.http.get("/health/ready").status_code == 200


def test_ten_concurrent_first_requests_cause_one_load(served):
    with served([fake("a", load_seconds=0.5)]) as s:
        client = s.client()
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda _: chat(client, "a"), range(10)))
        assert all(r.choices[0].message.content for r in results)
        assert s.arbiter.loads == 1
        assert 'modelyard_model_loads_total{model="a",result="success"} 1.0' in s.http.get("/metrics").text


def test_client_disconnect_mid_stream_stops_generation_and_frees_lease(served):
    with served([fake("a", token_latency_s=0.02)]) as s:
        stream = chat(s.client(), "a", max_tokens=100_000, stream=True)
        iterator = iter(stream)
        for _ in range(5):
            next(iterator)
        stream.close()
        closed = time.monotonic()
        s.wait_until(lambda: s.resident("a")["refcount"] == 0, timeout=1.0)
        s.wait_until(lambda: s.resident("a", stats=True)["worker"]["active"] == 0, timeout=1.0)
        assert time.monotonic() - closed < 1.0
        first = s.resident("a", stats=True)["worker"]
        time.sleep(0.3)
        later = s.resident("a", stats=True)["worker"]
        assert later["tokens_generated"] == first["tokens_generated"] < 1000
        assert later["active"] == 0


def test_waiter_whose_client_left_leaves_the_queue(served):
    with served([fake("slow", load_seconds=2)]) as s:
        url = s.base_url + "/v1/chat/completions"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"model": "slow", "messages": HELLO}, timeout=0.5)
        s.wait_until(lambda: s.ps()["waiting"] == 0, timeout=1.0)


def test_randomized_workload_stays_within_budget(served):
    rng = random.Random(20261127)
    names = [f"m{i}" for i in range(5)]
    models = [fake(n, memory_mb=rng.choice([200, 300, 400]), token_latency_s=0.002,
                   spec_keep_alive=rng.choice(["0", "200ms", "5m"])) for n in names]
    budget = 800
    assert sum(m["options"]["memory_mb"] for m in models) > budget
    with served(models, budget_mb=budget, max_queue=12) as s:
        client = s.client()
        samples: list[float] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                snapshot = s.ps()
                samples.append(snapshot["used_mb"])
                assert sum(r["memory_mb"] for r in snapshot["residents"]) == snapshot["used_mb"]
                time.sleep(0.01)

        def one(i: int):
            local = random.Random(i)
            model = local.choice(names)
            try:
                if local.random() < 0.5:
                    chunks = list(chat(client, model, max_tokens=local.randint(1, 12), stream=True))
                    assert chunks[-1].choices[0].finish_reason == "length"
                else:
                    assert chat(client, model, max_tokens=local.randint(1, 12)).choices[0].message.content
                return "ok"
            except openai.APIStatusError as exc:
                assert exc.status_code == 503 and exc.response.headers["retry-after"].isdigit(), exc
                return "503"

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(16) as pool:
                outcomes = list(pool.map(one, range(240)))
        finally:
            stop.set()
            sampler.join()
        assert len(outcomes) == 240
        assert outcomes.count("ok") >= 60  # most served; the rest were turned away with 503
        assert samples and max(samples) <= budget
        assert s.arbiter.peak_mb <= budget
        print(f"\nrandomized: {outcomes.count('ok')} ok, {outcomes.count('503')} 503, loads={s.arbiter.loads}, "
              f"evictions={s.arbiter.evictions}, peak={s.arbiter.peak_mb} MiB of {budget}, samples={len(samples)}")


def test_client_leaving_a_non_streamed_request_stops_generation(served):
    with served([fake("a", token_latency_s=0.02)]) as s:
        url = s.base_url + "/v1/chat/completions"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"model": "a", "messages": HELLO, "max_tokens": 100_000}, timeout=0.5)
        s.wait_until(lambda: s.resident("a", stats=True)["worker"]["active"] == 0, timeout=1.0)
        assert s.resident("a")["refcount"] == 0
        assert 'status="499"' in s.http.get("/metrics").text
