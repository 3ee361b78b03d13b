"""The CLI and the process as a user runs it: serve, ps, unload, settings, graceful SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import psutil
import pytest
import yaml
from conftest import ROOT, fake, free_port

from server.__main__ import main as cli_main
from server.__main__ import settings_from
from server.settings import Settings


def run_cli(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_env_vars_and_flags_configure_the_same_settings(monkeypatch):
    monkeypatch.setenv("MODELYARD_PORT", "9123")
    monkeypatch.setenv("MODELYARD_API_KEYS", "k1, k2")
    monkeypatch.setenv("MODELYARD_BUDGET_MB", "2048")
    settings = Settings()
    assert (settings.port, settings.api_keys, settings.budget_mb) == (9123, ["k1", "k2"], 2048)
    import argparse

    from server.__main__ import add_settings_flags

    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    flagged = settings_from(parser.parse_args(["--port", "9200", "--budget-mb", "1000", "--insecure-no-auth"]))
    assert (flagged.port, flagged.budget_mb, flagged.insecure_no_auth) == (9200, 1000, True)
    assert flagged.api_keys == ["k1", "k2"]  # flags override only what they name


def test_default_budget_is_a_share_of_ram_without_a_gpu():
    from server.memory import MemoryProbe, default_budget_mb

    probe = MemoryProbe()
    if probe.gpu:
        assert default_budget_mb(probe) <= 12288
    else:
        total = psutil.virtual_memory().total / 2**20
        assert 0.3 * total < default_budget_mb(probe) <= 0.6 * total


def test_invalid_registry_stops_serve_with_a_clear_message(tmp_path):
    registry = tmp_path / "models.yaml"
    registry.write_text("models:\n  - {id: broken, backend: fake, options: {load_seconds: -3}}\n")
    result = run_cli("serve", "--models", str(registry), "--port", str(free_port()))
    assert result.returncode == 2
    assert str(registry) in result.stderr and "'broken'" in result.stderr and "load_seconds" in result.stderr


def test_public_bind_without_key_refuses_to_start(tmp_path):
    registry = tmp_path / "models.yaml"
    registry.write_text("models: []\n")
    result = run_cli("serve", "--models", str(registry), "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2 and "--insecure-no-auth" in result.stderr


@pytest.fixture
def server_process(tmp_path):
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [fake("slow", token_latency_s=0.03), fake("quick")]}))
    port = free_port()
    env = {**os.environ, "MODELYARD_MODELS": str(registry), "MODELYARD_PORT": str(port),
           "MODELYARD_SHUTDOWN_GRACE_S": "10", "MODELYARD_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(base + "/health/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, "server did not start"
        time.sleep(0.05)
    yield process, base, port
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_ps_and_unload_commands(server_process, capsys):
    _, base, port = server_process
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    client.chat.completions.create(model="quick", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert cli_main(["ps", "--port", str(port)]) == 0
    listing = capsys.readouterr().out
    assert "quick" in listing and "fake" in listing and "ready" in listing
    assert cli_main(["unload", "quick", "--port", str(port)]) == 0
    assert cli_main(["unload", "quick", "--port", str(port)]) == 1
    assert httpx.get(base + "/admin/ps").json()["residents"] == []


def test_sigterm_lets_inflight_streams_finish_and_stops_every_worker(server_process):
    process, base, _ = server_process
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=40, stream=True)
    iterator = iter(stream)
    next(iterator)
    worker_pid = httpx.get(base + "/admin/ps").json()["residents"][0]["pid"]
    received: list = []
    reader = threading.Thread(target=lambda: received.extend(iterator))
    reader.start()
    process.send_signal(signal.SIGTERM)
    reader.join(15)
    assert process.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    contents = [c for c in received if c.choices and c.choices[0].delta.content]
    assert len(contents) == 40  # the in-flight stream ran to its end (the first chunk was the role)
    assert received[-1].choices[0].finish_reason == "length"
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE


def test_default_registry_serves_the_openai_client(tmp_path):
    """What `make serve` starts: the repository's models.yaml, demo models built first."""
    import tinymodels

    tinymodels.build_all()
    port = free_port()
    env = {**os.environ, "MODELYARD_PORT": str(port), "MODELYARD_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        deadline = time.monotonic() + 30
        while True:
            try:
                ids = [m.id for m in client.models.list()]
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, "server did not start"
                time.sleep(0.1)
        assert "demo-chat" in ids
        messages = [{"role": "user", "content": "hello"}]
        assert client.chat.completions.create(model="demo-chat", messages=messages, max_tokens=4).choices
        chunks = list(client.chat.completions.create(model="demo-chat", messages=messages, max_tokens=4, stream=True))
        assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        process.terminate()
        process.wait(30)


def test_sigterm_ends_the_event_streams_rather_than_waiting_out_the_grace_period(server_process):
    process, base, _ = server_process  # MODELYARD_SHUTDOWN_GRACE_S=10
    opened = threading.Event()
    ended: list[float] = []

    def watch() -> None:
        with httpx.stream("GET", base + "/admin/events", timeout=httpx.Timeout(10, read=None)) as response:
            opened.set()
            for _ in response.iter_lines():
                pass
        ended.append(time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert opened.wait(10)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) in (0, -signal.SIGTERM)
    watcher.join(5)
    assert ended and ended[0] - signalled < 5, "an open event stream held the shutdown"


def test_the_events_command_follows_loads_and_swaps(server_process):
    _, base, port = server_process
    follower = subprocess.Popen([sys.executable, "-m", "server", "events", "--port", str(port)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 15
        while not any("device 0/" in line for line in lines):  # the first snapshot: nothing loaded
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        client.chat.completions.create(model="quick", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        on_device = re.compile(r"device \d+/\d+ MiB: quick ready \d+")  # a snapshot: what is on the device
        while not any(on_device.search(line) for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        assert cli_main(["unload", "quick", "--port", str(port)]) == 0
        while not any("quick: unloaded (admin)" in line for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
    finally:
        follower.terminate()
        follower.wait(10)
    text = "".join(lines)
    assert "quick: loading at full" in text and "quick: ready, from disk in" in text
