"""/metrics after a known workload through the real app, real workers and the openai client."""

from __future__ import annotations

import openai
import pytest
from conftest import fake, serve
from exposition import scrape

MIB = 1024 * 1024
HELLO = [{"role": "user", "content": "hello there"}]  # the fake engine counts 2 words + 3 per message
PROMPT_TOKENS = 5
CHAT = "/v1/chat/completions"


def chat(client, model, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.create(model=model, messages=HELLO, **kwargs)


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """a: 2 plain chats + 1 stream; an unknown model; b evicts a; "once" unloads after its request;
    "broken" fails to load. Yields the server and its /metrics afterwards."""
    # a paces its tokens as an engine does: a reader that keeps up gets one chunk per token (chunks that
    # wait unread are merged, server/worker_client.py)
    models = [fake("a", memory_mb=600, token_latency_s=0.01), fake("b", memory_mb=600),
              fake("once", memory_mb=100, spec_keep_alive=0),
              fake("broken", memory_mb=100, fail_load="weights unreadable")]
    with serve(tmp_path_factory.mktemp("metrics"), models, budget_mb=1000) as s:
        client = s.client()
        chat(client, "a")
        chat(client, "a")
        assert len([c for c in chat(client, "a", max_tokens=5, stream=True) if c.choices]) >= 5
        with pytest.raises(openai.NotFoundError):
            chat(client, "no-such-model-from-a-client")
        chat(client, "b")  # 600 + 600 > 1000: a is evicted for capacity
        chat(client, "once")
        with pytest.raises(openai.InternalServerError):
            chat(client, "broken")
        assert s.http.get("/v1/no/such/route").status_code == 404
        assert len(client.models.list().data) == 4
        s.wait_until(lambda: s.resident("once") is None)
        yield s, scrape(s)


def test_requests_are_counted_by_route_template_model_and_status(workload):
    _, m = workload
    assert m.value("modelyard_requests_total", endpoint=CHAT, model="a", status="200") == 3
    assert m.value("modelyard_requests_total", endpoint=CHAT, model="unknown", status="404") == 1
    assert m.value("modelyard_requests_total", endpoint=CHAT, model="broken", status="500") == 1
    assert m.value("modelyard_request_duration_seconds_count", endpoint=CHAT) == 7


def test_requests_outside_any_route_or_model_get_fixed_labels(workload):
    _, m = workload
    assert m.value("modelyard_requests_total", endpoint="other", model="none", status="404") == 1
    assert m.value("modelyard_requests_total", endpoint="/v1/models", model="none", status="200") == 1
    assert "/v1/no/such/route" not in m.text


def test_a_model_name_the_registry_lacks_never_becomes_a_label(workload):
    _, m = workload
    assert "no-such-model-from-a-client" not in m.text
    assert m.label_values("model") <= {"a", "b", "once", "broken", "unknown", "none"}


def test_tokens_and_token_latencies_per_model(workload):
    _, m = workload
    assert m.value("modelyard_generation_tokens_total", model="a") == 4 + 4 + 5
    assert m.value("modelyard_prompt_tokens_total", model="a") == 3 * PROMPT_TOKENS
    assert m.value("modelyard_time_to_first_token_seconds_count", model="a") == 3
    assert m.value("modelyard_inter_token_latency_seconds_count", model="a") == 3
    assert m.value("modelyard_generation_tokens_total", model="b") == 4


def test_every_lease_records_its_queue_wait(workload):
    _, m = workload
    assert m.value("modelyard_queue_wait_seconds_count", model="a") == 3  # one load, two at once
    assert m.value("modelyard_queue_wait_seconds_count", model="b") == 1


def test_loads_and_evictions_by_result_and_reason(workload):
    _, m = workload
    for model in ("a", "b", "once"):
        assert m.value("modelyard_model_loads_total", model=model, result="success") == 1
    assert m.value("modelyard_model_loads_total", model="broken", result="failure") == 1
    assert m.value("modelyard_model_load_duration_seconds_count", model="broken") == 1
    assert m.value("modelyard_model_evictions_total", model="a", reason="capacity") == 1
    assert m.value("modelyard_model_evictions_total", model="once", reason="keep_alive") == 1


def test_memory_gauges_match_the_arbiter(workload):
    s, m = workload
    snapshot = s.ps()
    assert m.value("modelyard_memory_budget_bytes") == 1000 * MIB
    assert m.value("modelyard_memory_used_bytes") == pytest.approx(snapshot["used_mb"] * MIB, rel=1e-3)
    resident = {r["model"]: r["memory_mb"] for r in snapshot["residents"]}
    assert set(resident) == {"b"}
    assert m.value("modelyard_model_resident_bytes", model="b") == pytest.approx(resident["b"] * MIB, rel=1e-3)
    assert m.value("modelyard_model_resident_bytes", model="b") >= 600 * MIB
    for gone in ("a", "once", "broken"):
        assert m.value("modelyard_model_resident_bytes", model=gone) == 0


def test_idle_server_reports_nothing_running_or_waiting(workload):
    _, m = workload
    assert m.value("modelyard_num_requests_running") == 0
    assert m.value("modelyard_num_requests_waiting") == 0
    assert m.value("modelyard_queue_capacity") == 64  # the default --max-queue


def test_build_info_is_exported_without_created_series(workload):
    _, m = workload
    assert [k for k in m.samples if k[0] == "modelyard_build_info"]
    labels = dict(next(k[1] for k in m.samples if k[0] == "modelyard_build_info"))
    assert labels["version"] == "0.1.0"
    assert m.value("modelyard_build_info", **labels) == 1
    assert not [name for name in m.names if name.endswith("_created")]


def test_load_and_eviction_counters_start_at_zero_for_every_model(workload):
    _, m = workload
    assert m.value("modelyard_model_loads_total", model="b", result="failure") == 0
    assert m.value("modelyard_model_evictions_total", model="b", reason="over_budget") == 0
    assert m.value("modelyard_model_loads_total", model="a", result="timeout") == 0
