"""The page's server side through the real app: the /admin/events stream, preload, pins, the
registry for the playground, and the page's own files with their security rules.

The stream is read as a client reads it (httpx on a thread, lines parsed as server-sent events);
models are fakes and tiny real models in worker processes."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest
from conftest import fake

from tinymodels import build_all

HELLO = [{"role": "user", "content": "hello there"}]


class Stream:
    """GET /admin/events read on a thread: (event, id, data) messages as they arrive."""

    def __init__(self, base_url: str, headers: dict | None = None):
        self.messages: list[tuple[str, str | None, object]] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self._client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=None))
        self._response: httpx.Response | None = None
        self._headers = headers or {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.wait_for(lambda: self.status is not None, what="the response status")

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/admin/events", headers=self._headers) as response:
                self._response = response
                self.status = response.status_code
                event, event_id, data = "message", None, []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        self.messages.append((event, event_id, json.loads("\n".join(data))))
                        event, event_id, data = "message", None, []
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def of(self, kind: str) -> list:
        return [data for event, _, data in self.messages if event == kind]

    def records(self) -> list[dict]:
        hello = self.of("hello")
        return [*(hello[0]["history"] if hello else []), *self.of("record")]

    def wait_for(self, predicate, timeout: float = 15.0, what: str = "the stream"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"{what}: not seen within {timeout}s; messages: {self.messages[-6:]}")

    def close(self) -> None:
        """Hang up as a browser tab does: the socket goes (closing the response from this thread
        would not wake the reader blocked on it)."""
        if self._response is not None:
            sock = self._response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        assert not self._thread.is_alive(), "the stream's reader did not stop"
        self._client.close()


@contextlib.contextmanager
def stream(s, **kwargs):
    watcher = Stream(s.base_url, **kwargs)
    try:
        yield watcher
    finally:
        watcher.close()


def kinds(records: list[dict]) -> list[tuple]:
    return [(r["kind"], r["model"]) for r in records]


# ---- the event stream ------------------------------------------------------------------------------


def test_the_event_stream_opens_with_a_snapshot_and_follows_a_swap_to_the_warm_tier(served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600)], budget_mb=1000, ram_budget_mb=2000) as s, \
            stream(s) as events:
        assert events.status == 200 and [e for e, _, _ in events.messages[:2]] == ["hello", "snapshot"]
        first = events.of("snapshot")[0]
        assert first["residents"] == [] and first["budget_mb"] == 1000 and first["at"] > 0
        client = s.client()
        client.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
        client.chat.completions.create(model="b", messages=HELLO, max_tokens=2)
        events.wait_for(lambda: ("swapped_in", "b") in kinds(events.records()), what="b's swap in")
        assert kinds(events.records()) == [("loading", "a"), ("swapped_in", "a"), ("switched", None),
                                           ("evicted", "a"), ("loading", "b"), ("swapped_in", "b")]
        switched, evicted = events.records()[2], events.records()[3]
        assert switched["reason"] == "idle"  # a took b's place because it was idle, not by the aging bound
        assert evicted["reason"] == "capacity" and evicted["parked"] is True
        ready = events.wait_for(lambda: [x for x in events.of("snapshot") if x["parked"] and x["residents"]
                                         and x["residents"][0]["state"] == "ready"], what="a parked, b ready")
        last = ready[-1]
        assert [(r["model"], r["state"]) for r in last["residents"]] == [("b", "ready")]
        assert [p["model"] for p in last["parked"]] == ["a"] and last["used_mb"] == 600
        ids = [event_id for event, event_id, _ in events.messages if event == "record"]
        epoch = events.of("hello")[0]["epoch"]
        assert [i.split("-")[0] for i in ids] == [epoch] * 6
        assert [int(i.split("-")[1]) for i in ids] == sorted(int(i.split("-")[1]) for i in ids)


def test_a_burst_of_requests_costs_a_few_snapshots_not_one_per_request(served):
    with served([fake("a")]) as s, stream(s) as events:
        client = s.client()
        client.chat.completions.create(model="a", messages=HELLO, max_tokens=1)
        started, before = time.monotonic(), len(events.of("snapshot"))
        threads = [threading.Thread(target=lambda: [client.chat.completions.create(
            model="a", messages=HELLO, max_tokens=1) for _ in range(10)]) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
        sent = len(events.of("snapshot")) - before
        hub = s.app.state.services.events
        # 60 requests, each a lease and a release the arbiter reports: at most one snapshot per 100 ms
        assert 1 <= sent <= elapsed / hub.interval_s + 2, (sent, elapsed)
        assert events.of("snapshot")[-1]["residents"][0]["refcount"] == 0


def test_a_reconnecting_stream_is_sent_only_the_records_it_missed(served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600)], budget_mb=1000) as s:
        client = s.client()
        client.chat.completions.create(model="a", messages=HELLO, max_tokens=1)
        with stream(s) as first:
            last_id = max(r["id"] for r in first.records())
            assert first.of("hello")[0]["resumed"] is False
        client.chat.completions.create(model="b", messages=HELLO, max_tokens=1)
        epoch = first.of("hello")[0]["epoch"]
        with stream(s, headers={"Last-Event-ID": f"{epoch}-{last_id}"}) as again:
            assert again.of("hello")[0]["resumed"] is True
            missed = again.of("hello")[0]["history"]
            assert kinds(missed) == [("switched", None), ("evicted", "a"), ("loading", "b"), ("swapped_in", "b")]
            assert all(r["id"] > last_id for r in missed)
            loads = again.of("hello")[0]["loads"]  # each model's loads, whatever the client saw already
            assert [r["source"] for r in loads["a"]] == ["disk"] and list(loads) == ["a", "b"]
        with stream(s, headers={"Last-Event-ID": f"0badc0de-{last_id}"}) as after_restart:
            hello = after_restart.of("hello")[0]  # an id another server (or this one before a restart) gave
            assert hello["resumed"] is False and len(hello["history"]) == 6


def test_a_stream_the_client_leaves_is_unsubscribed_at_once(served):
    with served([fake("a")]) as s:
        hub = s.app.state.services.events
        watchers = [Stream(s.base_url) for _ in range(3)]
        s.wait_until(lambda: hub.subscribers == 3)
        for watcher in watchers:
            watcher.close()
        s.wait_until(lambda: hub.subscribers == 0, timeout=5)  # not at the next heartbeat, 15 s away


def test_the_event_stream_takes_the_api_key_and_the_host_check(served):
    with served([fake("a")], api_keys=["sesame"]) as s:
        with stream(s) as anonymous:
            assert anonymous.status == 401
        with stream(s, headers={"Authorization": "Bearer sesame", "Host": "evil.example:8000"}) as rebound:
            assert rebound.status == 403  # a DNS-rebinding page cannot read the stream either
        with stream(s, headers={"Authorization": "Bearer sesame"}) as keyed:
            assert keyed.status == 200 and keyed.wait_for(lambda: keyed.of("snapshot"))


# ---- preload, pins and the registry --------------------------------------------------------------


def test_preload_answers_once_the_model_is_ready_and_refuses_what_cannot_load(served):
    with served([fake("a", memory_mb=300, load_seconds=0.3), fake("huge", memory_mb=5000)], budget_mb=1000) as s:
        answer = s.http.post("/admin/preload", json={"model": "a", "keep_alive": "10m"})
        assert answer.status_code == 200
        body = answer.json()
        assert body["model"] == "a" and body["status"] == "resident" and body["placement"] == "full"
        assert body["seconds"] >= 0.3
        resident = s.resident("a")
        assert resident["state"] == "ready" and resident["refcount"] == 0 and 590 < resident["expires_in_s"] <= 600
        too_large = s.http.post("/admin/preload", json={"model": "huge"})
        assert too_large.status_code == 400 and "cannot fit" in too_large.json()["error"]["message"]
        unknown = s.http.post("/admin/preload", json={"model": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
        bad = s.http.post("/admin/preload", json={"model": "a", "keep_alive": "soon"})
        assert bad.status_code == 400


def test_a_model_pinned_over_http_keeps_its_room_until_it_is_unpinned(served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600), fake("p", memory_mb=100, spec_pinned=True),
                 fake("huge", memory_mb=5000)], budget_mb=1200) as s:
        client = s.client()
        pinned = s.http.post("/admin/pin", json={"model": "a"}).json()
        assert pinned == {"model": "a", "pinned": True, "status": pinned["status"]}
        s.wait_until(lambda: (s.resident("a") or {}).get("state") == "ready")
        assert s.resident("a")["pinned"] and s.resident("a")["expires_in_s"] is None
        with pytest.raises(Exception, match="pinned"):
            client.chat.completions.create(model="b", messages=HELLO, max_tokens=1)
        assert s.http.post("/admin/pin", json={"model": "a", "pinned": False}).json()["pinned"] is False
        client.chat.completions.create(model="b", messages=HELLO, max_tokens=1)
        assert {r["model"] for r in s.ps()["residents"]} == {"b", "p"}
        refused = s.http.post("/admin/pin", json={"model": "p", "pinned": False})
        assert refused.status_code == 400 and "models.yaml" in refused.json()["error"]["message"]
        too_large = s.http.post("/admin/pin", json={"model": "huge"})
        assert too_large.status_code == 400 and "cannot fit" in too_large.json()["error"]["message"]


def test_the_registry_for_the_playground_says_what_each_model_does_and_what_its_forms_take(served):
    demo = build_all()
    models = [fake("chat", spec_keep_alive=-1, spec_description="a fake"),
              {"id": "sd", "backend": "diffusers", "path": str(demo / "tiny-sd"),
               "options": {"default_steps": 3, "max_steps": 9, "default_size": "64x64", "min_side": 16}},
              {"id": "tts", "backend": "vits", "path": str(demo / "tiny-vits")}]
    with served(models) as s:
        listing = {m["id"]: m for m in s.http.get("/admin/models").json()["models"]}
        assert listing["chat"]["capabilities"] == ["chat", "completion"]
        assert listing["chat"]["keep_alive_s"] == -1 and listing["chat"]["description"] == "a fake"
        assert listing["chat"]["status"] == "unloaded" and listing["chat"]["pinned"] is False
        assert listing["sd"]["capabilities"] == ["image"]
        assert listing["sd"]["playground"]["image"] == {"default_size": "64x64", "sizes": [], "min_side": 16,
                                                        "max_side": 1024, "default_steps": 3, "max_steps": 9}
        assert listing["tts"]["capabilities"] == ["speech"] and "alloy" in listing["tts"]["playground"]["voices"]


# ---- the page's files ------------------------------------------------------------------------------


def test_the_page_loads_without_a_key_under_a_strict_policy_while_its_data_needs_one(served):
    with served([fake("a")], api_keys=["sesame"]) as s:
        anonymous = httpx.Client(base_url=s.base_url, timeout=10)
        page = anonymous.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<base href="/">' in page.text and 'src="ui/app.js"' in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere: works offline
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")):
            asset = anonymous.get(f"/ui/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
            assert "http://" not in asset.text.replace("http://www.w3.org/2000/svg", "")
        assert anonymous.get("/ui/..%2Fserver%2Fapp.py").status_code == 404
        assert anonymous.get("/ui/secrets.txt").status_code == 404
        for path in ("/admin/models", "/admin/ps", "/admin/plan", "/v1/models"):
            assert anonymous.get(path).status_code == 401
        assert anonymous.post("/admin/pin", json={"model": "a"}).status_code == 401
        anonymous.close()


def test_the_root_redirects_to_the_page_and_the_page_answers_only_local_host_names(served):
    with served([fake("a")]) as s:
        root = httpx.get(s.base_url + "/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "ui"
        assert httpx.get(s.base_url + "/", follow_redirects=True).url.path == "/ui"
        rebound = httpx.get(s.base_url + "/ui", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403
