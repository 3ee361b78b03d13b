"""Security defaults and input bounds (../shared/design/hardening.md items 1-6 and 11)."""

from __future__ import annotations

import httpx
import openai
import pytest
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
