"""Fixtures: a real modelyard app served by uvicorn on a real socket, with real worker processes."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.app import create_app  # noqa: E402
from server.listener import uvicorn_server  # noqa: E402
from server.settings import Settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_processes() -> list[psutil.Process]:
    """Model workers started by this test process (directly or through a server subprocess)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "backends.worker" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


def fake(model_id: str, **options) -> dict:
    """A models.yaml entry for the fake engine; spec-level keys may be passed as spec_<key>."""
    spec = {k[5:]: options.pop(k) for k in list(options) if k.startswith("spec_")}
    return {"id": model_id, "backend": "fake", **spec, "options": options}


class Served:
    """A running server: its URL, the real app (for the arbiter's bookkeeping) and clients."""

    def __init__(self, base_url: str, app, server: uvicorn.Server):
        self.base_url = base_url
        self.app = app
        self.server = server
        self.http = httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": "Bearer test"})

    @property
    def arbiter(self):
        return self.app.state.services.arbiter

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=kwargs.pop("api_key", "test"), **kwargs)

    def ps(self, stats: bool = False) -> dict:
        return self.http.get("/admin/ps", params={"stats": stats}).raise_for_status().json()

    def resident(self, model: str, stats: bool = False) -> dict | None:
        return next((r for r in self.ps(stats)["residents"] if r["model"] == model), None)

    def wait_until(self, predicate, timeout: float = 10.0, interval: float = 0.02):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s")


@contextlib.contextmanager
def serve(tmp_path: Path, models: list[dict], probe=None, **overrides) -> Iterator[Served]:
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": models}))
    settings = Settings(**{"models": registry, "port": free_port(), "worker_overhead_mb": 0, "budget_mb": 4096,
                           "log_level": "warning", "shutdown_grace_s": 5, **overrides})
    app = create_app(settings, probe=probe)
    others = {p.pid for p in worker_processes()}  # workers of servers started by other fixtures
    server = uvicorn_server(app, settings)  # what `modelyard serve` runs
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    served = Served(f"http://{settings.host}:{settings.port}", app, server)
    try:
        yield served
    finally:
        served.http.close()
        server.should_exit = True
        thread.join(30)
        leftovers = [p for p in worker_processes()
                     if p.pid not in others and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, f"worker processes outlived the server: {leftovers}"


@pytest.fixture
def served(tmp_path):
    """Factory: `with served([fake("m")], budget_mb=...) as s:`"""

    def start(models: list[dict], **overrides):
        return serve(tmp_path, models, **overrides)

    return start


@pytest.fixture(scope="session", autouse=True)
def no_leaked_workers():
    yield
    leftovers = worker_processes()
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not leftovers, f"leaked worker processes: {leftovers}"


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MODELYARD_API_KEYS", raising=False)
    yield


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
