"""The server<->worker contract: typed params both ways, plans across the pipe, refusals that are bugs."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backends.contract import (
    PARAMS,
    ChatParams,
    ContractError,
    Method,
    TranscriptionParams,
    decode_params,
    encode_params,
    method_of,
)
from backends.fake.spec import FakeSpec
from backends.plan import Device, type_name
from server.errors import BackendError
from server.registry import load_registry
from server.worker_client import _map_error
from tinymodels import build_all

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("torch", "llama_cpp", "ctranslate2", "transformers", "diffusers", "faster_whisper")


@pytest.mark.parametrize("method", list(Method))
def test_every_params_type_crosses_the_pipe_unchanged(method):
    params = PARAMS[method]()
    assert method_of(params) is method
    assert decode_params(method.value, json.loads(json.dumps(encode_params(params)))) == params


def test_a_misspelt_params_key_is_refused_naming_it():
    with pytest.raises(ContractError, match="max_tokns"):
        decode_params("chat", {"messages": [], "max_tokns": 3})
    with pytest.raises(ContractError, match="unknown method"):
        decode_params("summon", {})


def test_routes_cannot_build_params_with_a_misspelt_field():
    with pytest.raises(TypeError):
        ChatParams(max_tokns=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        TranscriptionParams(audio="x.f32")  # type: ignore[call-arg]


def test_a_contract_refusal_is_an_internal_error_not_the_clients():
    error = _map_error({"kind": "contract", "message": "ChatParams has no field 'max_tokns'"}, "m/fake/pid=1")
    assert isinstance(error, BackendError) and error.status == 500 and "max_tokns" in error.message


def test_the_real_worker_refuses_a_misspelt_key_and_keeps_serving():
    plan = FakeSpec(id="m", backend="fake").resolve(Device())
    parent, child = socket.socketpair()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "backends.worker_main", "--fd", str(child.fileno())],
                              pass_fds=(child.fileno(),), env=env)
    child.close()
    pipe = parent.makefile("rwb")

    def send(message: dict) -> None:
        pipe.write(json.dumps(message).encode() + b"\n")
        pipe.flush()

    try:
        send({"plan_type": type_name(type(plan)), "plan": plan.to_json()})
        assert json.loads(pipe.readline())["op"] == "ready"
        send({"op": "call", "id": 1, "method": "chat", "params": {"messages": [], "max_tokns": 3}})
        reply = json.loads(pipe.readline())
        assert reply == {"id": 1, "err": {"kind": "contract", "message": "ChatParams has no field 'max_tokns'"}}
        good = encode_params(ChatParams(messages=[{"role": "user", "content": "hi"}], max_tokens=2))
        send({"op": "call", "id": 2, "method": "chat", "params": good})
        replies = [json.loads(pipe.readline()) for _ in range(3)]
        assert replies[-1]["end"]["usage"]["completion_tokens"] == 2
        send({"op": "stop"})
        assert worker.wait(10) == 0
    finally:
        worker.kill()
        parent.close()


def test_every_demo_models_plan_survives_the_pipe():
    build_all()
    for spec in load_registry(ROOT / "models.yaml"):
        for device in (Device(kind="cpu", runtime_mb=60), Device(kind="cuda", runtime_mb=300)):
            plan = spec.resolve(device)
            again = type(plan).from_json(json.loads(json.dumps(plan.to_json())))
            assert again == plan, spec.id
            assert again.estimate() == plan.estimate()
            assert dataclasses.is_dataclass(plan)


def test_the_http_process_and_planning_import_no_engine():
    build_all()
    code = (
        "import sys; from pathlib import Path\n"
        "from server.app import create_app; from server.settings import Settings\n"
        "from backends.plan import Device\n"
        "app = create_app(Settings(models=Path('models.yaml')))\n"
        "from server.registry import load_registry\n"
        "for spec in load_registry(Path('models.yaml')):\n"
        "    spec.resolve(Device(kind='cuda')).estimate()\n"
        f"print(sorted(m for m in {ENGINES!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
