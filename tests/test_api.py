"""The wire as clients see it: chat shapes, streaming, models, health, admin, metrics."""

from __future__ import annotations

import json
import time

import pytest
from conftest import fake, serve

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    models = [fake("chat", spec_aliases=["gpt-4o-mini"], token_latency_s=0.001), fake("slow", token_latency_s=0.05),
              fake("tiny-ctx", context_length=16)]
    with serve(tmp_path_factory.mktemp("api"), models) as served:
        yield served


def test_chat_completion_has_usage_and_request_id(s):
    raw = s.client().chat.completions.with_raw_response.create(model="chat", messages=HELLO, max_tokens=5)
    reply = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == 5 and reply.usage.total_tokens == reply.usage.prompt_tokens + 5
    assert reply.choices[0].finish_reason == "length"


def test_alias_answers_for_its_model(s):
    assert s.client().chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=1).choices


def test_stream_starts_with_role_and_ends_with_usage_then_done(s):
    body = {"model": "chat", "messages": HELLO, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with s.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)  # never an `event:` line
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({(e["id"], e["created"], e["model"]) for e in events}) == 1
    assert all(e["usage"] is None for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length" and events[-2]["choices"][0]["delta"] == {}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4


def test_stream_without_include_usage_has_no_usage_key(s):
    body = {"model": "chat", "messages": HELLO, "max_tokens": 2, "stream": True}
    with s.http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line and line != "data: [DONE]"]
    assert all("usage" not in e for e in events)


def test_openai_client_streams_text(s):
    chunks = list(s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=6, stream=True,
                                                     stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6 and chunks[-1].usage.completion_tokens == 6


def test_stop_string_ends_the_reply_with_finish_reason_stop(s):
    client = s.client()
    full = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=8).choices[0].message.content
    word = full.split()[3]
    reply = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=8, stop=[" " + word])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == full[: full.index(" " + word)]


def test_max_completion_tokens_wins_over_max_tokens(s):
    reply = s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=9, max_completion_tokens=2)
    assert reply.usage.completion_tokens == 2


def test_n_returns_n_choices(s):
    reply = s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=3, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    chunks = list(s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=3, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_prompt_longer_than_context_is_400_before_streaming(s):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        s.client().chat.completions.create(model="tiny-ctx", messages=[{"role": "user", "content": "w " * 40}],
                                           stream=True)
    assert caught.value.code == "context_length_exceeded"


def test_paths_without_v1_prefix_answer_too(s):
    assert s.http.get("/models").json()["object"] == "list"
    assert s.http.post("/chat/completions", json={"model": "chat", "messages": HELLO, "max_tokens": 1}).status_code == 200


def test_models_list_shows_residency(s):
    s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=1)
    models = {m["id"]: m for m in s.http.get("/v1/models").json()["data"]}
    assert set(models) == {"chat", "slow", "tiny-ctx"}
    assert models["chat"]["resident"] is True and models["chat"]["object"] == "model"
    assert models["chat"]["owned_by"] and isinstance(models["chat"]["created"], int)
    assert models["tiny-ctx"]["max_model_len"] == models["tiny-ctx"]["context_length"] == 16
    assert models["chat"]["state"] == "loaded" and models["slow"]["state"] == "unloaded"
    assert models["chat"]["capabilities"] == ["chat", "completion", "fim", "tools"]
    assert s.http.get("/v1/models/gpt-4o-mini").json()["id"] == "gpt-4o-mini"
    assert s.http.get("/v1/models/absent").status_code == 404


def test_health_and_readiness(s):
    assert s.http.get("/health").json() == {"status": "ok"}
    ready = s.http.get("/health/ready").json()
    assert ready["status"] == "ready" and ready["models"] == 3


def test_admin_lists_residents_with_memory_pid_refcount_and_expiry(s):
    s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=1)
    entry = s.resident("chat")
    assert entry["state"] == "ready" and entry["pid"] > 0 and entry["refcount"] == 0
    assert entry["memory_mb"] >= 256 and 0 < entry["expires_in_s"] <= 300


def test_admin_unload_of_busy_model_waits_for_its_stream(s):
    stream = s.client().chat.completions.create(model="slow", messages=HELLO, max_tokens=10, stream=True)
    iterator = iter(stream)
    next(iterator)
    assert s.http.post("/admin/unload", json={"model": "slow"}).json() == {"model": "slow", "unloaded": True}
    assert s.resident("slow")["state"] == "draining"
    assert sum(1 for c in iterator if c.choices and c.choices[0].delta.content) >= 9  # the stream finished
    s.wait_until(lambda: s.resident("slow") is None, timeout=5)
    assert s.http.post("/admin/unload", json={"model": "slow"}).status_code == 404


def test_metrics_count_requests_loads_and_memory(s):
    s.client().chat.completions.create(model="chat", messages=HELLO, max_tokens=3)
    text = s.http.get("/metrics").text
    assert 'modelyard_requests_total{endpoint="/v1/chat/completions",model="chat",status="200"}' in text
    assert 'modelyard_model_loads_total{model="chat",result="success"}' in text
    assert "modelyard_memory_budget_bytes 4.294967296e+09" in text
    assert 'modelyard_model_resident_bytes{model="chat"} 2.68435456e+08' in text
    assert "modelyard_time_to_first_token_seconds_bucket" in text
    s.http.post("/v1/chat/completions", json={"model": "secret-prompt-name", "messages": HELLO})
    text = s.http.get("/metrics").text
    assert "secret-prompt-name" not in text and 'model="unknown",status="404"' in text


def test_health_answers_while_a_model_is_loading(served):
    with served([fake("slow-load", load_seconds=1.0)]) as srv:
        import threading

        thread = threading.Thread(target=lambda: srv.client().chat.completions.create(
            model="slow-load", messages=HELLO, max_tokens=1))
        thread.start()
        srv.wait_until(lambda: srv.http.get("/health/ready").json()["loading"] is not None)
        started = time.monotonic()
        assert srv.http.get("/health").status_code == 200
        assert time.monotonic() - started < 0.5
        thread.join(10)
