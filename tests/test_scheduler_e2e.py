"""The scheduler through the real app, real worker processes, real model files and the clients.

Each rule has its unit test (test_arbiter.py, test_admission.py, test_placement.py, test_ladder.py);
these prove the wiring: a parked model's next request really loads from RAM (its files are gone by
then), the fit ladder's rung is what the worker really got, the dry-run plan and the CLI show what
the arbiter does, and the placement header reaches the client."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile
from conftest import ROOT, fake
from exposition import scrape

from backends.gguf.spec import GgufOptions, GgufSpec
from backends.plan import Device
from tinymodels import build_all
from tinymodels.gguf import write_llama

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def models_root() -> Path:
    return build_all()


def chat(client, model, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.create(model=model, messages=HELLO, **kwargs)


def parked(s) -> dict[str, dict]:
    return {p["model"]: p for p in s.ps()["parked"]}


def swaps_from(s, model: str, source: str) -> float:
    """Loads of `model` from `source` ("disk" or "ram") as /metrics counts them (0 before any)."""
    key = ("modelyard_model_swap_in_seconds_count", frozenset({"model": model, "source": source}.items()))
    return scrape(s).samples.get(key, 0.0)


# ---- the warm tier -----------------------------------------------------------------------------


def test_an_evicted_fake_model_parks_and_comes_back_from_ram_though_its_weights_are_unreadable(served, tmp_path):
    unreadable = tmp_path / "weights-unreadable"
    models = [fake("a", memory_mb=600, fail_load_while_exists=str(unreadable)), fake("b", memory_mb=600)]
    with served(models, budget_mb=1000, ram_budget_mb=2000) as s:
        client = s.client()
        chat(client, "a")
        chat(client, "b")  # a is evicted for room: parked in the warm tier
        assert set(parked(s)) == {"a"} and parked(s)["a"]["memory_mb"] == 600
        entry = client.models.retrieve("a").model_dump()
        assert entry["status"] == "parked" and entry["parked"] and not entry["resident"]
        unreadable.write_text("")  # a load from disk would fail now
        assert chat(client, "a").choices[0].message.content
        assert s.resident("a")["source"] == "ram" and s.resident("a", stats=True)["worker"]["source"] == "ram"
        assert swaps_from(s, "a", "ram") == 1 and swaps_from(s, "a", "disk") == 1
        metrics = scrape(s)
        assert metrics.value("modelyard_parked_models") == 1  # b, now
        assert metrics.value("modelyard_parked_bytes") == 1200 * 1024 * 1024  # a keeps its copy while resident
        assert metrics.value("modelyard_ram_budget_bytes") == 2000 * 1024 * 1024


def test_with_the_warm_tier_off_an_evicted_model_is_dropped(served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600)], budget_mb=1000, ram_budget_mb=0) as s:
        client = s.client()
        chat(client, "a")
        chat(client, "b")
        chat(client, "a")
        assert parked(s) == {} and s.resident("a")["source"] == "disk"


def write_wav(path: Path) -> Path:
    t = np.arange(16000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV")
    path.write_bytes(buffer.getvalue())
    return path


# Per engine family: the demo model to copy, its models.yaml entry, one request, and the RAM form.
ENGINES = {
    "gguf": ("tiny-llama.gguf", {"backend": "gguf", "options": {"n_ctx": 512}}, "page_cache"),
    "hf": ("tiny-hf", {"backend": "hf", "options": {"quantization": "4bit"}}, "tmpfs"),
    "diffusers": ("tiny-sd", {"backend": "diffusers", "options": {
        "default_steps": 2, "default_size": "32x32", "min_side": 16, "device": "cpu"}}, "tmpfs"),
    "whisper": ("tiny-whisper", {"backend": "faster-whisper", "options": {
        "compute_type": "int8", "beam_size": 1, "max_new_tokens": 8}}, "tmpfs"),
}


def request(s, engine: str, tmp_path: Path) -> None:
    client = s.client()
    if engine in ("gguf", "hf"):
        assert chat(client, engine).choices[0].message.content is not None
    elif engine == "diffusers":
        image = client.images.generate(model=engine, prompt="a lighthouse", size="32x32", response_format="b64_json")
        assert image.data[0].b64_json
    else:
        with write_wav(tmp_path / "tone.wav").open("rb") as audio:
            assert client.audio.transcriptions.create(model=engine, file=audio).text is not None


@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_parked_model_loads_from_ram_after_its_files_are_gone(served, models_root, tmp_path, engine):
    """keep_alive 0 parks the model after each request; its files are then moved away, and the
    next request is still served, by a worker loading the warm tier's copy."""
    name, entry, form = ENGINES[engine]
    files = tmp_path / "models" / name
    files.parent.mkdir()
    (shutil.copytree if (models_root / name).is_dir() else shutil.copyfile)(models_root / name, files)
    spec = {"id": engine, "path": str(files), "keep_alive": 0, **entry}
    with served([spec], ram_budget_mb=2000) as s:
        request(s, engine, tmp_path)
        s.wait_until(lambda: engine in parked(s), timeout=30)
        copy = parked(s)[engine]
        assert copy["form"] == form and copy["memory_mb"] > 0
        if form == "page_cache":  # mlock needs the privilege, or a file under RLIMIT_MEMLOCK
            allowed = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
            lockable = allowed == resource.RLIM_INFINITY or files.stat().st_size <= allowed
            assert copy["locked"] == (os.geteuid() == 0 or lockable)
        shutil.move(files, files.with_name(name + ".moved"))  # the model's own files are unreadable now
        request(s, engine, tmp_path)
        assert swaps_from(s, engine, "ram") == 1
        store = s.arbiter._store
        root = store.root
    assert root is None or not root.exists()  # the server removed its RAM copies on shutdown


def test_a_parked_model_whose_file_was_replaced_loads_the_new_file(served, models_root, tmp_path):
    path = tmp_path / "m.gguf"
    shutil.copyfile(models_root / "tiny-llama.gguf", path)
    spec = {"id": "m", "backend": "gguf", "path": str(path), "keep_alive": 0, "options": {"n_ctx": 512}}
    with served([spec], ram_budget_mb=2000) as s:
        chat(s.client(), "m")
        s.wait_until(lambda: "m" in parked(s), timeout=30)
        replacement = tmp_path / "m.new"
        shutil.copyfile(models_root / "tiny-llama.gguf", replacement)
        os.replace(replacement, path)  # a new download of the model: the parked copy is stale
        chat(s.client(), "m")
        assert swaps_from(s, "m", "disk") == 2 and swaps_from(s, "m", "ram") == 0


# ---- the fit ladder ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_context_gguf(tmp_path_factory) -> Path:
    """4 blocks of 256: 4 KiB of f16 KV per token, so the context dominates the footprint."""
    path = tmp_path_factory.mktemp("ladder") / "long.gguf"
    write_llama(path, vocab=512, dim=256, layers=4, heads=4, context=32768)
    return path


def test_a_gguf_too_large_for_the_budget_at_its_context_loads_with_a_smaller_one(served, long_context_gguf):
    entry = {"id": "long", "backend": "gguf", "path": str(long_context_gguf), "min_context": 2048,
             "options": {"n_ctx": 32768}}
    spec = GgufSpec(id="long", backend="gguf", path=long_context_gguf, options=GgufOptions(n_ctx=8192))
    budget = int(spec.resolve(Device(kind="cpu", runtime_mb=100)).estimate().total_mb) + 1  # room for ~8k tokens
    with served([entry], budget_mb=budget, worker_overhead_mb=100, model_dirs=[str(long_context_gguf.parent)]) as s:
        response = s.http.post("/v1/chat/completions", json={"model": "long", "messages": HELLO, "max_tokens": 2})
        assert response.status_code == 200
        placement = response.headers["x-modelyard-placement"]
        n_ctx = s.resident("long", stats=True)["worker"]["n_ctx"]  # what llama.cpp was really given
        assert 8192 <= n_ctx < 32768 and placement == f"context; n_ctx={n_ctx}"
        assert s.resident("long")["placement"] == placement
        listed = s.client().models.retrieve("long").model_dump()
        assert listed["max_model_len"] == n_ctx and listed["placement"] == placement
        too_long = " ".join(["word"] * (n_ctx + 100))
        with pytest.raises(openai.BadRequestError) as caught:
            s.client().chat.completions.create(model="long", messages=[{"role": "user", "content": too_long}])
        assert caught.value.code == "context_length_exceeded"


def test_a_model_no_rung_fits_is_400_naming_the_rungs_tried(served, long_context_gguf):
    entry = {"id": "long", "backend": "gguf", "path": str(long_context_gguf), "min_context": 16384,
             "options": {"n_ctx": 32768}}
    with served([entry], budget_mb=100, worker_overhead_mb=100, model_dirs=[str(long_context_gguf.parent)]) as s:
        with pytest.raises(openai.BadRequestError) as caught:
            chat(s.client(), "long")
        assert caught.value.code == "model_too_large"
        assert "the fit ladder tried context; n_ctx=16384" in caught.value.message


def test_the_placement_header_names_the_full_rung_on_plain_and_streamed_responses(served):
    with served([fake("a")]) as s:
        body = {"model": "a", "messages": HELLO, "max_tokens": 2}
        assert s.http.post("/v1/chat/completions", json=body).headers["x-modelyard-placement"] == "full"
        with s.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            assert response.headers["x-modelyard-placement"] == "full"
            list(response.iter_lines())


# ---- admission -----------------------------------------------------------------------------------


def test_the_resident_models_new_requests_are_served_while_another_model_waits_its_turn(served):
    models = [fake("a", memory_mb=600, token_latency_s=0.02), fake("b", memory_mb=600)]
    with served(models, budget_mb=1000, max_wait_s=60) as s:
        client = s.client()
        stream = chat(client, "a", max_tokens=40, stream=True)
        next(iter(stream))  # a is serving
        b_done = {}
        waiter = threading.Thread(target=lambda: b_done.setdefault("at", (chat(client, "b"), time.monotonic())))
        waiter.start()
        s.wait_until(lambda: s.ps()["waiting"] == 1)
        started = time.monotonic()
        assert chat(client, "a").choices[0].message.content  # served at once: a is not drained for b
        assert time.monotonic() - started < 2 and "at" not in b_done
        assert s.resident("a")["state"] == "ready"
        list(stream)
        waiter.join(10)
        assert b_done["at"][1] >= started
        assert s.ps()["switches"] == {"idle": 1}
        assert scrape(s).value("modelyard_wait_seconds_count", model="b", reason="queue") == 1


# ---- the dry-run plan --------------------------------------------------------------------------


def run_cli(s, *args: str) -> subprocess.CompletedProcess:
    port = s.base_url.rsplit(":", 1)[1]
    return subprocess.run([sys.executable, "-m", "server", *args, "--port", port], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "MODELYARD_API_KEYS": ""})


def test_the_dry_run_plan_shows_what_a_request_would_do_and_the_arbiter_then_does_it(served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600)], budget_mb=1000, ram_budget_mb=2000) as s:
        chat(s.client(), "a")
        plan = s.http.get("/admin/plan", params={"model": "b"}).json()
        assert plan["verdict"] == "evict" and plan["evict"] == ["a"] and plan["park"] == ["a"]
        assert plan["estimate"]["weights_mb"] == 600 and plan["placement"] == "full" and not plan["fits_now"]
        assert plan["expected_wait_s"] > 0 and plan["source"] == "disk"
        assert s.ps()["loads"] == 1  # asking changed nothing
        chat(s.client(), "b")
        assert set(parked(s)) == {"a"} and s.ps()["evictions"] == {"capacity": 1}
        again = s.http.get("/admin/plan", params={"model": "a"}).json()
        assert again["state"] == "parked" and again["source"] == "ram" and again["park"] == ["b"]
        everything = s.http.get("/admin/plan").json()["models"]
        assert [p["model"] for p in everything] == ["a", "b"] and everything[1]["verdict"] == "resident"
        missing = s.http.get("/admin/plan", params={"model": "nope"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_modelyard_plan_and_ps_print_the_plan_and_the_parked_models(served):
    with served([fake("a", memory_mb=600), fake("b", memory_mb=600)], budget_mb=1000, ram_budget_mb=2000) as s:
        chat(s.client(), "a")
        one = run_cli(s, "plan", "b")
        assert one.returncode == 0, one.stderr
        assert "b (fake): absent, would load from disk" in one.stdout
        assert "evict: a" in one.stdout and "park in RAM: a" in one.stdout and "expected wait" in one.stdout
        every = run_cli(s, "plan", "--all")
        assert every.returncode == 0 and "a (fake): ready" in every.stdout and "resident now" in every.stdout
        raw = run_cli(s, "plan", "b", "--json")
        assert json.loads(raw.stdout)["evict"] == ["a"]
        assert run_cli(s, "plan", "nope").returncode == 1
        chat(s.client(), "b")
        listing = run_cli(s, "ps").stdout
        assert "warm tier 600 of 2000 MiB" in listing
        assert any(line.split()[:3] == ["a", "fake", "parked"] for line in listing.splitlines())
