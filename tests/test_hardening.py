"""Security defaults and input bounds (../shared/design/hardening.md items 1-6 and 11)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time

import httpx
import openai
import psutil
import pytest
import yaml
from conftest import fake

from server.app import ConfigError, create_app
from server.security import KeyRing, host_allowed
from server.settings import Settings

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    from conftest import serve

    with serve(tmp_path_factory.mktemp("hardening"), [fake("a"), fake("org/with-slash")],
               max_body_bytes=4096, cors_origins=["https://ui.example"]) as s:
        yield s


def post(s, body, **kwargs):
    return s.http.post("/v1/chat/completions", json=body, **kwargs)


def assert_error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"].startswith("req_")


def test_non_loopback_bind_without_key_refuses_to_start(tmp_path):
    with pytest.raises(ConfigError, match="API key"):
        create_app(Settings(host="0.0.0.0", models=tmp_path / "m.yaml"))


def test_non_loopback_bind_with_key_or_explicit_flag_is_allowed():
    from server.app import check_exposure

    check_exposure(Settings(host="0.0.0.0", api_keys=["k"]))
    check_exposure(Settings(host="0.0.0.0", insecure_no_auth=True))


def test_loopback_server_refuses_foreign_host_headers(app_server):
    response = app_server.http.get("/v1/models", headers={"Host": "evil.example:8000"})
    assert_error(response, 403, code="host_not_allowed")
    assert app_server.http.get("/v1/models", headers={"Host": "localhost:8000"}).status_code == 200


def test_allowed_hosts_admit_named_hosts_only(served):
    """Open WebUI in Docker Desktop addresses the server as host.docker.internal."""
    with served([fake("a")], allowed_hosts=["host.docker.internal"]) as s:
        assert s.http.get("/v1/models", headers={"Host": "host.docker.internal:8000"}).status_code == 200
        assert s.http.get("/v1/models", headers={"Host": "HOST.DOCKER.INTERNAL"}).status_code == 200
        for foreign in ("host.docker.internal.evil.example", "evil.example", "internal:8000"):
            refused = s.http.get("/v1/models", headers={"Host": foreign})
            assert_error(refused, 403, code="host_not_allowed")
            assert "host.docker.internal" in refused.json()["error"]["message"]


def test_host_header_parsing():
    assert host_allowed("127.0.0.1:8000") and host_allowed("[::1]:8000") and host_allowed("LOCALHOST")
    assert not host_allowed("attacker.com") and not host_allowed("127.0.0.1.nip.io:80")


def test_api_keys_are_required_when_configured(served):
    with served([fake("a")], api_keys=["sk-one", "sk-two"]) as s:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert_error(httpx.get(s.base_url + "/v1/models"), 401, code="invalid_api_key")
        assert [m.id for m in s.client(api_key="sk-two").models.list()] == ["a"]
        assert httpx.get(s.base_url + "/health").status_code == 200  # liveness stays public


def test_keyring_checks_every_key():
    ring = KeyRing(["a", "b"])
    assert ring.accepts("a") and ring.accepts("b") and not ring.accepts("c") and not ring.accepts("")


def test_cors_preflight_allows_stainless_headers_for_listed_origins(app_server):
    headers = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os"}
    response = app_server.http.options("/v1/chat/completions", headers=headers)
    assert response.status_code == 200
    assert "x-stainless-os" in response.headers["access-control-allow-headers"].lower()
    other = app_server.http.options("/v1/chat/completions", headers={**headers, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_body_over_the_cap_is_413_declared_or_streamed(app_server):
    big = {"model": "a", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_error(post(app_server, big), 413)

    def chunks():
        yield b'{"model": "a", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}]}'

    response = app_server.http.post("/v1/chat/completions", content=chunks(),
                                    headers={"Content-Type": "application/json"})
    assert_error(response, 413)


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 10**12), ("temperature", -0.1),
    ("temperature", 2.5), ("top_p", 1.5), ("n", 0), ("n", 1000), ("presence_penalty", 3),
    ("seed", 2**70), ("max_completion_tokens", 0),
])
def test_out_of_range_numbers_are_400_with_param(app_server, field, value):
    assert_error(post(app_server, {"model": "a", "messages": HELLO, field: value}), 400, param=field)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_400(app_server, literal):
    raw = '{"model": "a", "messages": [{"role": "user", "content": "hi"}], "temperature": ' + literal + "}"
    response = app_server.http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, param="temperature")


def test_invalid_json_and_missing_fields_are_400_not_422(app_server):
    response = app_server.http.post("/v1/chat/completions", content="{not json",
                                    headers={"Content-Type": "application/json"})
    assert_error(response, 400)
    assert_error(post(app_server, {"model": "a"}), 400, param="messages")
    assert_error(post(app_server, {"model": "a", "messages": []}), 400, param="messages")
    assert_error(post(app_server, {"model": "a", "messages": HELLO, "keep_alive": "soon"}), 400, param="keep_alive")


def test_unknown_fields_are_ignored(app_server):
    body = {"model": "a", "messages": HELLO, "max_tokens": 2, "prompt_cache_key": "k", "parallel_tool_calls": False,
            "reasoning_effort": "low", "stop": ["a", "b", "c", "d", "e", "f"]}
    assert post(app_server, body).status_code == 200


def test_unknown_model_is_404_without_paths(app_server):
    response = post(app_server, {"model": "../../etc/passwd", "messages": HELLO})
    assert_error(response, 404, param="model", code="model_not_found")
    assert "/etc" not in response.json()["error"]["message"].replace("../../etc/passwd", "")


def test_unknown_route_and_method_use_the_envelope(app_server):
    assert_error(app_server.http.get("/v1/nothing-here"), 404)
    assert_error(app_server.http.get("/v1/chat/completions"), 405)


def test_model_ids_with_slashes_are_served(app_server):
    client = app_server.client()
    assert client.models.retrieve("org/with-slash").id == "org/with-slash"
    reply = client.chat.completions.create(model="org/with-slash", messages=HELLO, max_tokens=2)
    assert reply.model == "org/with-slash"


# ---- connections (server/connections.py): one client must not exhaust the server -------------------


def raw(s, timeout: float = 10.0) -> socket.socket:
    host, port = s.base_url.removeprefix("http://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)))
    conn.settimeout(timeout)
    return conn


def read_to_close(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    out = b""
    try:
        while chunk := conn.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    from conftest import serve

    with serve(tmp_path_factory.mktemp("strict"), [fake("a")], header_timeout_s=1, body_timeout_s=1,
               keep_alive_timeout_s=1, max_header_bytes=4096) as s:
        yield s


def test_idle_connection_that_never_sends_a_request_is_closed(strict):
    conn = raw(strict)  # read_to_close gives up after 10 s: closed by then, by the 1 s header deadline
    assert read_to_close(conn) == b""


def test_slowloris_headers_get_408_and_the_connection_closes(strict):
    conn = raw(strict)
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
    for _ in range(3):  # a header line now and then, never the blank line that ends them
        time.sleep(0.4)
        with contextlib.suppress(OSError):
            conn.sendall(b"X-Slow: 1\r\n")
    response = read_to_close(conn)
    assert status_of(response) == 408 and json_body(response)["error"]["code"] == "request_timeout"


def test_slow_body_gets_408_and_the_connection_closes(strict):
    conn = raw(strict)
    conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"model\": ")
    response = read_to_close(conn)
    assert status_of(response) == 408 and json_body(response)["error"]["code"] == "request_timeout"


def test_oversized_headers_get_431_without_being_buffered(strict):
    conn = raw(strict)
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    response = read_to_close(conn)
    assert status_of(response) == 431
    assert json_body(response)["error"]["code"] == "headers_too_large"
    assert strict.http.get("/health").status_code == 200


def test_idle_keep_alive_connection_is_closed_after_its_timeout(strict):
    conn = raw(strict)
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    response = read_to_close(conn)  # answered, then closed once idle for keep_alive_timeout_s
    assert status_of(response) == 200


def test_past_the_connection_cap_idle_connections_make_room_and_busy_ones_get_503(served):
    with served([fake("a")], max_connections=8, body_timeout_s=30) as s:
        idle = [raw(s) for _ in range(12)]
        assert httpx.get(s.base_url + "/health").status_code == 200  # the oldest idle ones were closed
        time.sleep(0.2)
        closed = sum(1 for conn in idle if _closed(conn))
        assert closed >= 5
        busy = [raw(s) for _ in range(8)]
        for conn in busy:  # requests whose bodies are still coming: not idle, never closed for room
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        conn = raw(s)
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        response = read_to_close(conn)
        assert status_of(response) == 503
        assert json_body(response)["error"]["code"] == "too_many_connections" and b"retry-after" in response.lower()
        for conn in busy + idle:
            conn.close()


def _closed(conn: socket.socket) -> bool:
    conn.settimeout(0.05)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_health_answers_while_5000_idle_connections_are_held_open_at_a_1024_file_limit(tmp_path):
    """`modelyard serve` itself, limited to 1,024 open files: 5,000 idle connections cost it nothing
    but the oldest idle ones (no client's request is ever dropped for them)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 6000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    idle = min(5000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256)  # still far past the server's 1,024
    with modelyard_serve(tmp_path, open_files=1024) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        held = open_idle(port, idle)
        try:
            for _ in range(5):
                response = httpx.get(base_url + "/health", timeout=5)
                assert response.status_code == 200
            reply = openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=30).chat.completions
            assert reply.create(model="a", messages=HELLO, max_tokens=2).choices[0].message.content
        finally:
            for conn in held:
                conn.close()


@contextlib.contextmanager
def modelyard_serve(tmp_path, open_files: int):
    """The real CLI in a subprocess, under a lowered open-file limit."""
    import resource
    import subprocess
    import sys

    from conftest import ROOT, free_port

    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [fake("a")]}))
    port = free_port()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--models", str(registry), "--port", str(port),
         "--log-level", "warning", "--budget-mb", "4096", "--shutdown-grace-s", "2"],
        cwd=ROOT, preexec_fn=limit)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                    break
            assert process.poll() is None and time.monotonic() < deadline, "modelyard serve did not start"
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        process.wait(30)


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never send anything (non-blocking connects, so the kernel's queue,
    not this loop, sets the pace)."""
    held = []
    for _ in range(count):
        conn = socket.socket()
        conn.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            conn.connect(("127.0.0.1", port))
        held.append(conn)
    time.sleep(1.0)
    return held


# ---- finding 7: 500s that should be 400s ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_keep_alive_as_a_400_digit_integer_is_400(app_server, path):
    body = {"model": "a", "messages": HELLO, "prompt": "x", "input": "x"}
    raw_body = json.dumps(body)[:-1] + ', "keep_alive": ' + "9" * 400 + "}"
    response = app_server.http.post(path, content=raw_body, headers={"Content-Type": "application/json"})
    assert_error(response, 400, param="keep_alive")


@pytest.mark.parametrize(("field", "body"), [
    ("messages.0.content", {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("messages.0.content.1.text", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "ok"}, {"type": "text", "text": "x\udfffy"}]}]}),
    ("stop.0", {"messages": HELLO, "stop": ["\ud83d"]}),
    ("response_format.json_schema.schema.properties.\\ud800", {"messages": HELLO, "response_format": {
        "type": "json_schema", "json_schema": {"name": "r", "schema": {"properties": {"\ud800": {}}}}}}),
])
def test_lone_surrogate_in_any_string_is_400_naming_the_field(app_server, field, body):
    raw_body = json.dumps({"model": "a", **body})  # ensure_ascii: the surrogate travels as \ud800, as attackers send it
    response = app_server.http.post("/v1/chat/completions", content=raw_body,
                                    headers={"Content-Type": "application/json"})
    assert_error(response, 400, param=field)
    assert "surrogate" in response.json()["error"]["message"]


def test_lone_surrogate_in_an_embedding_input_is_400(app_server):
    response = app_server.http.post("/v1/embeddings", content='{"model": "a", "input": ["ok", "\\ud800"]}',
                                    headers={"Content-Type": "application/json"})
    assert_error(response, 400, param="input.1")


# ---- finding 8 and the Host header -----------------------------------------------------------------


def test_percent_encoded_newline_in_the_path_cannot_forge_an_access_log_line(app_server, caplog):
    with caplog.at_level("INFO", logger="modelyard.access"):
        app_server.http.get("/v1/models/x%0A2026-01-01%20FORGED%20200%0D%1B[31m")
        app_server.http.get("/health")  # the line above is written once its request ends
    lines = [r.getMessage() for r in caplog.records if r.name == "modelyard.access"]
    forged = [line for line in lines if "FORGED" in line]
    assert forged and all("\n" not in line and "\r" not in line and "\x1b" not in line for line in forged)
    assert "\\n2026-01-01 FORGED 200\\r\\x1b" in forged[0]


@pytest.mark.parametrize("host", ["localhost:8000.evil.example", "localhost:1@evil.example", "127.0.0.1:80@evil.example",
                                  "[::1]:8000.evil.example", "localhost:80/evil", "localhost evil.example"])
def test_host_header_with_a_forged_port_or_userinfo_is_refused(app_server, host):
    assert_error(app_server.http.get("/v1/models", headers={"Host": host}), 403, code="host_not_allowed")


# ---- smaller findings: image parts, fan-out ---------------------------------------------------------


def test_image_part_to_a_text_only_model_is_a_clear_400(app_server):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"model": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}]}
    response = post(app_server, body)
    assert_error(response, 400, param="messages.0.content.1", code="unsupported_model_capability")
    assert "image_url" in response.json()["error"]["message"]


def test_image_urls_never_carry_the_clients_host_header(served):
    """Bound publicly (no Host check), a forged Host must not end up in the links handed out."""
    from tinymodels import DEFAULT_ROOT, media

    media.build(DEFAULT_ROOT)
    sd = {"id": "sd", "backend": "diffusers", "path": str(DEFAULT_ROOT / "tiny-sd"),
          "options": {"default_steps": 1, "default_size": "16x16", "min_side": 16, "device": "cpu"}}
    body = {"model": "sd", "prompt": "fox", "response_format": "url"}
    public = {"host": "0.0.0.0", "api_keys": ["test"], "model_dirs": [str(DEFAULT_ROOT)]}
    with served([sd], **public) as s:
        url = s.http.post("/v1/images/generations", json=body, headers={"Host": "evil.example"}).json()["data"][0]["url"]
        assert url.startswith("http://127.0.0.1:") and "evil" not in url
        assert httpx.get(url).headers["content-type"] == "image/png"
    with served([sd], public_base_url="https://ai.example.com/modelyard/", **public) as s:
        url = s.http.post("/v1/images/generations", json=body, headers={"Host": "evil.example"}).json()["data"][0]["url"]
        assert url.startswith("https://ai.example.com/modelyard/v1/images/files/")


# ---- finding 4: fan-out and backpressure -------------------------------------------------------------


def test_fan_out_past_the_request_token_cap_is_400(served):
    with served([fake("a")], max_request_tokens=1000) as s:
        huge = {"model": "a", "prompt": ["p"] * 64, "n": 16, "max_tokens": 1_000_000}
        assert_error(s.http.post("/v1/completions", json=huge), 400, param="max_tokens", code="request_too_large")
        fanned = {"model": "a", "prompt": ["p"] * 4, "n": 2, "max_tokens": 200}  # 1,600 tokens
        assert_error(s.http.post("/v1/completions", json=fanned), 400, code="request_too_large")
        assert_error(post(s, {"model": "a", "messages": HELLO, "n": 8, "max_tokens": 126}), 400,
                     code="request_too_large")
        fits = {"model": "a", "prompt": ["p"] * 4, "n": 2, "max_tokens": 125}  # exactly 1,000
        assert len(s.http.post("/v1/completions", json=fits).json()["choices"]) == 8


def test_fan_out_without_max_tokens_counts_the_context(served):
    with served([fake("a", context_length=600)], max_request_tokens=1000) as s:
        assert_error(post(s, {"model": "a", "messages": HELLO, "n": 2}), 400, code="request_too_large")
        assert len(post(s, {"model": "a", "messages": HELLO, "n": 1}).json()["choices"]) == 1


def test_stream_client_that_stops_reading_pauses_generation_then_is_dropped_releasing_its_lease(served):
    with served([fake("a", context_length=2_000_000)], write_stall_timeout_s=3, max_request_tokens=2_000_000) as s:
        conn = raw(s)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = json.dumps({"model": "a", "prompt": "go", "max_tokens": 1_000_000, "stream": True}).encode()
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

        def generated() -> int:
            resident = s.resident("a", stats=True)
            return resident["worker"]["tokens_generated"] if resident and "worker" in resident else 0

        s.wait_until(lambda: generated() > 0)
        samples = [generated()]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # generation must come to a halt while nobody reads
            time.sleep(0.5)
            samples.append(generated())
            if samples[-1] == samples[-2] and s.resident("a")["refcount"] == 1:
                break
        assert samples[-1] == samples[-2], f"generation never paused: {samples}"
        assert samples[-1] < 200_000  # bounded by buffers, not by max_tokens
        s.wait_until(lambda: s.resident("a")["refcount"] == 0, timeout=15)  # dropped: the lease is free
        conn.settimeout(10)
        read_to_close(conn)  # what was buffered, then the end: the server closed the connection
        assert post(s, {"model": "a", "messages": HELLO, "max_tokens": 2}).status_code == 200


# ---- finding 6: hung engines ---------------------------------------------------------------------


HUNG = dict(worker_heartbeat_timeout_s=2, first_token_timeout_s=2, inter_token_timeout_s=2)


def sse_events(response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def evictions(s, reason: str) -> float:
    from exposition import scrape

    return scrape(s).value("modelyard_model_evictions_total", model="a", reason=reason)


def test_sigstopped_worker_mid_stream_gets_an_error_event_then_done_and_is_restarted(served):
    with served([fake("a", token_latency_s=0.02)], **HUNG) as s:
        assert post(s, {"model": "a", "messages": HELLO, "max_tokens": 2}).status_code == 200
        pid = s.resident("a")["pid"]
        body = {"model": "a", "messages": HELLO, "max_tokens": 100_000, "stream": True}
        with s.http.stream("POST", "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    break
            os.kill(pid, signal.SIGSTOP)
            rest = [line[6:] for line in lines if line.startswith("data: ")]
        assert rest[-1] == "[DONE]"
        error = json.loads(rest[-2])["error"]
        assert error["code"] == "engine_timeout" and "heartbeat" in error["message"]
        s.wait_until(lambda: s.resident("a") is None, timeout=10)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert post(s, {"model": "a", "messages": HELLO, "max_tokens": 2}).status_code == 200
        assert s.resident("a")["pid"] != pid
        assert evictions(s, "hung") == 1


def test_sigstopped_idle_worker_is_noticed_and_restarted_on_the_next_request(served):
    with served([fake("a")], **HUNG) as s:
        assert post(s, {"model": "a", "messages": HELLO, "max_tokens": 2}).status_code == 200
        pid = s.resident("a")["pid"]
        os.kill(pid, signal.SIGSTOP)
        s.wait_until(lambda: s.resident("a") is None, timeout=10)  # no longer "ready"
        reply = post(s, {"model": "a", "messages": HELLO, "max_tokens": 2})
        assert reply.status_code == 200 and s.resident("a")["pid"] != pid
        assert s.ps()["evictions"] == {"hung": 1}


def test_engine_wedged_before_its_first_token_gets_504_and_a_fresh_worker(served):
    with served([fake("a", hang_generation=True)], **HUNG) as s:
        response = post(s, {"model": "a", "messages": HELLO, "max_tokens": 5})
        assert_error(response, 504, code="engine_timeout")
        assert "first token" in response.json()["error"]["message"]
        s.wait_until(lambda: s.resident("a") is None, timeout=10)
        assert s.ps()["evictions"] == {"hung": 1}


def test_engine_wedged_between_tokens_ends_the_stream_with_an_error_event(served):
    with served([fake("a", hang_after_tokens=3)], **HUNG) as s:
        body = {"model": "a", "messages": HELLO, "max_tokens": 50, "stream": True}
        with s.http.stream("POST", "/v1/chat/completions", json=body, timeout=30) as response:
            events = sse_events(response)
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "engine_timeout"
        assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
        s.wait_until(lambda: s.resident("a") is None, timeout=10)


def test_a_load_longer_than_the_heartbeat_timeout_is_not_taken_for_a_hang(served):
    with served([fake("a", load_seconds=3)], **HUNG) as s:
        assert post(s, {"model": "a", "messages": HELLO, "max_tokens": 2}).status_code == 200
        time.sleep(1.5)  # past the watchdog's first checks
        assert post(s, {"model": "a", "messages": HELLO, "max_tokens": 2}).status_code == 200
        assert s.ps()["evictions"] == {}


def test_slow_but_steady_engine_is_not_declared_hung(served):
    with served([fake("a", token_latency_s=0.5)], **HUNG) as s:
        reply = post(s, {"model": "a", "messages": HELLO, "max_tokens": 8})  # 4 s, never 2 s without a token
        assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] == "length"
        assert s.ps()["evictions"] == {}


# ---- shutdown grace ------------------------------------------------------------------------------


def test_stream_still_running_when_the_shutdown_grace_ends_gets_an_error_event_then_done(served):
    with served([fake("a", token_latency_s=0.01)], shutdown_grace_s=2) as s:
        body = {"model": "a", "messages": HELLO, "max_tokens": 100_000, "stream": True}
        with s.http.stream("POST", "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            s.server.should_exit = True
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "shutting_down"
