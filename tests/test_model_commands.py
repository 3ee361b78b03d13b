"""`modelyard pull | add | models --discover | doctor` end to end: the real CLI process, huggingface_hub
against a local stand-in of the Hub (tests/hub_stub.py) serving repositories made of the demo models,
models.yaml edited in place, and the added models served by the real app to the openai client."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, fake, free_port, serve
from hub_stub import StubHub

import tinymodels
from backends.plan import Device
from server.__main__ import main as cli_main
from server.registry import load_registry, parse_spec

REGISTRY_TEXT = """\
# My models. This comment, the one below and the key order must survive `pull` and `add`.
models:
  - id: house-chat   # the model my editor uses
    backend: fake
    options: {memory_mb: 64}
"""
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def demo() -> Path:
    return tinymodels.build_all()


def files_of(directory: Path) -> dict[str, Path]:
    return {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def big_vocab_gguf(tmp_path_factory) -> Path:
    """A GGUF whose metadata (a 32k-token vocabulary) is larger than the first range read."""
    from tinymodels.gguf import write_llama

    path = tmp_path_factory.mktemp("gguf") / "big-vocab-Q4_0.gguf"
    write_llama(path, vocab=32000, dim=64, layers=1, heads=2, q4_0=True)
    return path


@pytest.fixture(scope="module")
def hub(demo, big_vocab_gguf):
    stub = StubHub()
    stub.add("modelyard-test/big-vocab-GGUF", {big_vocab_gguf.name: big_vocab_gguf})
    gguf = (demo / "tiny-llama.gguf").read_bytes()
    stub.add("modelyard-test/tiny-llama-GGUF", {
        "tiny-llama-Q4_K_M.gguf": gguf, "tiny-llama-Q8_0.gguf": gguf, "README.md": b"# tiny",
        "mmproj-tiny-llama-F16.gguf": demo / "tiny-llava-mmproj.gguf"})
    stub.add("modelyard-test/tiny-hf", {**files_of(demo / "tiny-hf"), "pytorch_model.bin": b"\x80\x04pickle",
                                        "original/consolidated.00.pth": b"\x80\x04pickle"})
    sd = files_of(demo / "tiny-sd")
    stub.add("modelyard-test/tiny-sd", {**sd, "unet/diffusion_pytorch_model.fp16.safetensors":
                                        sd["unet/diffusion_pytorch_model.safetensors"],
                                        "tiny-sd-full.safetensors": demo / "tiny-sd.safetensors"})
    stub.add("modelyard-test/tiny-whisper", files_of(demo / "tiny-whisper"))
    stub.add("modelyard-test/only-pickle", {"config.json": demo / "tiny-hf/config.json",
                                            "pytorch_model.bin": b"\x80\x04pickle"})
    stub.add("modelyard-test/gated-hf", files_of(demo / "tiny-hf"), gated_token="hf_test_token")
    url = stub.start()
    stub.url = url
    yield stub
    stub.stop()


@pytest.fixture
def home(tmp_path, hub):
    """A user's machine: a models.yaml with comments, an empty Hub cache, the Makefile's HF_HUB_OFFLINE."""
    (tmp_path / "models.yaml").write_text(REGISTRY_TEXT)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HOME": str(tmp_path / "home"), "MODELYARD_MODELS": str(tmp_path / "models.yaml"),
           "MODELYARD_PORT": str(free_port()), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    env.pop("OLLAMA_MODELS", None)
    hub.requests.clear()
    return tmp_path, env


def modelyard(env: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def registry_entries(tmp: Path) -> list[dict]:
    return yaml.safe_load((tmp / "models.yaml").read_text())["models"]


def server_dir(tmp: Path) -> Path:
    (tmp / "served").mkdir(exist_ok=True)
    return tmp / "served"


def chat_once(tmp: Path, entry: dict) -> str:
    with serve(server_dir(tmp), [entry], model_dirs=[str(tmp)]) as served:
        reply = served.client().chat.completions.create(model=entry["id"], messages=HELLO, max_tokens=4)
    return reply.choices[0].finish_reason


# ---- pull -----------------------------------------------------------------------------------

def test_pull_gguf_quant_estimates_from_its_header_then_downloads_adds_and_serves(home, hub):
    tmp, env = home
    result = modelyard(env, "pull", "modelyard-test/tiny-llama-GGUF:Q8_0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "tiny-llama-Q8_0.gguf" in out and "tiny-llama-Q4_K_M.gguf" not in out.split("quantizations")[0]
    assert "quantizations here: Q4_K_M, Q8_0" in out
    # The estimate was made from the header, read by a range request, before the file was downloaded.
    fetches = hub.fetched("tiny-llama-Q8_0.gguf")
    assert fetches[0].range and fetches[0].range.startswith("bytes=0-") and fetches[-1].range is None
    assert hub.requests.index(fetches[0]) < hub.requests.index(fetches[-1])
    assert not hub.fetched("tiny-llama-Q4_K_M.gguf") and not hub.fetched("README.md")
    assert hub.fetched("mmproj-tiny-llama-F16.gguf"), "the vision projector comes with the model"
    # ... and it is the engine's own estimate: the same figures the arbiter computes for the real file.
    (added,) = [e for e in registry_entries(tmp) if e["id"] != "house-chat"]
    assert added["id"] == "tiny-llama:q8_0" and added["backend"] == "gguf"
    assert added["options"]["mmproj"].endswith("mmproj-tiny-llama-F16.gguf"), "served with its projector"
    local = Path(added["path"])
    assert local.is_file() and local.is_relative_to(tmp / "hub")
    real = parse_spec(added).resolve(Device("cpu", 60)).estimate()
    assert f"estimate {real} on cpu" in out
    assert "plan: fits now" in out and "no server is running" in out
    text = (tmp / "models.yaml").read_text()
    assert text.startswith(REGISTRY_TEXT.rstrip("\n")), "comments and the existing entry are kept as written"
    assert "# Pulled from modelyard-test/tiny-llama-GGUF:Q8_0" in text
    assert chat_once(tmp, added) in ("length", "stop")


def test_pull_reads_a_long_gguf_header_in_growing_ranges(home, hub, big_vocab_gguf):
    from server import hub as hub_module

    _, env = home
    result = modelyard(env, "pull", "modelyard-test/big-vocab-GGUF", "--dry-run")
    assert result.returncode == 0, result.stderr
    ranges = [r.range for r in hub.fetched(big_vocab_gguf.name)]
    assert len(ranges) >= 2 and all(ranges), ranges
    assert ranges[0] == f"bytes=0-{hub_module.GGUF_FIRST_READ - 1}"
    ends = [int(r.rsplit("-", 1)[1]) for r in ranges]
    assert ends == sorted(ends) and ends[-1] < big_vocab_gguf.stat().st_size - 1, "never the whole file"
    entry = {"id": "x", "backend": "gguf", "path": str(big_vocab_gguf)}
    assert f"estimate {parse_spec(entry).resolve(Device('cpu', 60)).estimate()}" in result.stdout


def test_pull_snapshot_fetches_only_safetensors_and_configs_and_serves(home, hub):
    tmp, env = home
    result = modelyard(env, "pull", "modelyard-test/tiny-hf", "--id", "my-tiny")
    assert result.returncode == 0, result.stderr
    assert not hub.fetched("pytorch_model.bin") and not hub.fetched("consolidated.00.pth")
    weights = hub.fetched("model.safetensors")
    assert weights[0].range == "bytes=0-100000", "huggingface_hub's safetensors header read comes first"
    assert weights[-1].range is None
    (added,) = [e for e in registry_entries(tmp) if e["id"] == "my-tiny"]
    assert added["backend"] == "hf" and Path(added["path"]).is_dir()
    assert sorted(p.name for p in Path(added["path"]).iterdir()) == sorted(
        n for n in files_of(tinymodels.DEFAULT_ROOT / "tiny-hf"))
    assert f"estimate {parse_spec(added).resolve(Device('cpu', 60)).estimate()}" in result.stdout
    assert chat_once(tmp, added) in ("length", "stop")


def test_pull_diffusers_and_faster_whisper_snapshots_detect_their_engines(home, hub):
    tmp, env = home
    for ref in ("modelyard-test/tiny-sd", "modelyard-test/tiny-whisper"):
        result = modelyard(env, "pull", ref)
        assert result.returncode == 0, result.stderr
    assert not hub.fetched("diffusion_pytorch_model.fp16.safetensors"), "fp16 copies beside fp32 weights are skipped"
    assert not hub.fetched("tiny-sd-full.safetensors"), "a single-file copy of the pipeline is skipped"
    entries = {e["id"]: e for e in registry_entries(tmp)}
    assert entries["tiny-sd"]["backend"] == "diffusers" and entries["tiny-whisper"]["backend"] == "faster-whisper"
    registry = load_registry(tmp / "models.yaml", [tmp])
    assert {s.id for s in registry} == {"house-chat", "tiny-sd", "tiny-whisper"}


def test_pull_dry_run_prints_the_plan_and_downloads_no_weights(home, hub):
    tmp, env = home
    result = modelyard(env, "pull", "modelyard-test/tiny-llama-GGUF", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "tiny-llama-Q4_K_M.gguf" in result.stdout, "Q4_K_M is the default quantization"
    assert "plan: fits now" in result.stdout and "dry run: nothing downloaded" in result.stdout
    assert all(r.range for r in hub.fetched("tiny-llama-Q4_K_M.gguf"))
    assert (tmp / "models.yaml").read_text() == REGISTRY_TEXT


def test_pull_says_when_a_model_is_larger_than_the_budget(home):
    _, env = home
    result = modelyard(env, "pull", "modelyard-test/tiny-hf", "--dry-run", "--budget-mb", "64")
    assert result.returncode == 0, result.stderr
    assert "does not fit" in result.stdout and "fit ladder" in result.stdout and "64 MiB" in result.stdout


def test_pull_reports_whom_a_running_server_would_evict(home, tmp_path):
    _, env = home
    models = [fake("resident-a", memory_mb=350), fake("resident-b", memory_mb=350)]
    with serve(server_dir(tmp_path), models, budget_mb=800) as served:
        for model in ("resident-a", "resident-b"):
            served.client().chat.completions.create(model=model, messages=HELLO, max_tokens=1)
        port = served.base_url.rsplit(":", 1)[1]
        result = modelyard(env, "pull", "modelyard-test/tiny-hf", "--dry-run", "--port", port)
    assert result.returncode == 0, result.stderr
    assert "against what the running server holds" in result.stdout
    assert "plan: fits after evicting resident-a (idle)" in result.stdout  # least recently used goes first


def test_pull_refuses_pickle_only_repositories(home, hub):
    tmp, env = home
    result = modelyard(env, "pull", "modelyard-test/only-pickle")
    assert result.returncode == 1
    assert "only pickle weights" in result.stderr and "safetensors" in result.stderr
    assert not hub.fetched("pytorch_model.bin")
    assert (tmp / "models.yaml").read_text() == REGISTRY_TEXT


def test_pull_of_a_gated_repository_needs_hf_token(home, hub):
    _, env = home
    refused = modelyard(env, "pull", "modelyard-test/gated-hf", "--dry-run")
    assert refused.returncode == 1 and "gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    hub.requests.clear()
    allowed = modelyard({**env, "HF_TOKEN": "hf_test_token"}, "pull", "modelyard-test/gated-hf")
    assert allowed.returncode == 0, allowed.stderr
    assert all(r.authorization == "Bearer hf_test_token" for r in hub.requests if "gated-hf" in r.path)


def test_pull_names_unknown_quantizations_and_repositories(home):
    _, env = home
    unknown_quant = modelyard(env, "pull", "modelyard-test/tiny-llama-GGUF:Q2_K", "--dry-run")
    assert unknown_quant.returncode == 1 and "Q4_K_M, Q8_0" in unknown_quant.stderr
    unknown_repo = modelyard(env, "pull", "modelyard-test/no-such-model", "--dry-run")
    assert unknown_repo.returncode == 1 and "does not exist" in unknown_repo.stderr
    bad = modelyard(env, "pull", "not a repo", "--dry-run")
    assert bad.returncode == 1 and "OWNER/NAME" in bad.stderr


def test_pull_says_clearly_when_the_hub_is_unreachable(home):
    _, env = home
    result = modelyard({**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}, "pull", "org/model")
    assert result.returncode == 1
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


# ---- add --------------------------------------------------------------------------------------

def test_add_detects_every_demo_format_and_keeps_the_registry_valid(tmp_path, demo, capsys):
    registry = tmp_path / "models.yaml"
    registry.write_text(REGISTRY_TEXT)
    expected = {"tiny-llama.gguf": ("gguf", {}), "tiny-embed.gguf": ("gguf", {"embedding": True}),
                "tiny-hf": ("hf", {}), "tiny-gptq": ("hf", {}), "tiny-embed-hf": ("hf", {"embedding": True}),
                "tiny-sd": ("diffusers", {}), "tiny-whisper": ("faster-whisper", {}),
                "tiny-wav2vec2": ("wav2vec2", {}), "tiny-seamless": ("seamless-m4t", {}), "tiny-vits": ("vits", {})}
    flags = ["--models", str(registry), "--model-dirs", f"{tmp_path},{demo}"]
    for name in expected:
        assert cli_main(["add", str(demo / name), *flags]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert out.count("estimate ") == len(expected)
    entries = {e.get("path"): e for e in registry_entries(tmp_path)}
    for name, (backend, options) in expected.items():
        entry = entries[str(demo / name)]
        assert entry["backend"] == backend and entry.get("options", {}) == options, entry
    assert len(load_registry(registry, [tmp_path, demo])) == len(expected) + 1
    assert (registry.read_text()).startswith(REGISTRY_TEXT.rstrip("\n"))
    # the same file twice is one entry; another file with a taken name gets a fresh id
    assert cli_main(["add", str(demo / "tiny-llama.gguf"), *flags]) == 0
    assert "already in" in capsys.readouterr().out
    copy = tmp_path / "tiny-llama.gguf"
    shutil.copy(demo / "tiny-llama.gguf", copy)
    assert cli_main(["add", str(copy), *flags]) == 0
    assert "added tiny-llama-2" in capsys.readouterr().out


def test_add_creates_models_yaml_when_there_is_none(tmp_path, demo, capsys):
    registry = tmp_path / "new" / "models.yaml"
    flags = ["--models", str(registry), "--model-dirs", str(demo)]
    assert cli_main(["add", str(demo / "tiny-llama.gguf"), "--id", "first", *flags]) == 0, capsys.readouterr()
    assert registry.read_text().startswith("# The model registry")
    assert [s.id for s in load_registry(registry, [demo])] == ["first"]


def test_add_refuses_what_the_server_would_refuse_and_leaves_models_yaml_alone(tmp_path, demo, capsys):
    registry = tmp_path / "models.yaml"
    registry.write_text(REGISTRY_TEXT)
    flags = ["--models", str(registry), "--model-dirs", str(tmp_path)]
    assert cli_main(["add", str(demo / "tiny-llama.gguf"), *flags]) == 1
    assert "outside the allowed model directories" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a model")
    assert cli_main(["add", str(tmp_path / "notes.txt"), *flags]) == 1
    assert "not a GGUF file or a model directory" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    assert cli_main(["add", str(pickled), *flags]) == 1
    assert "only pickle weights" in capsys.readouterr().err
    assert registry.read_text() == REGISTRY_TEXT


# ---- models --discover ------------------------------------------------------------------------

def hf_cache_repo(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """A Hugging Face cache entry laid out as huggingface_hub writes it (blobs, snapshot links, refs)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def ollama_model(root: Path, name: str, tag: str, gguf: Path, namespace: str = "library") -> Path:
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    blob = root / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    template = b"{{ .Prompt }}"
    (root / "blobs" / f"sha256-{hashlib.sha256(template).hexdigest()}").write_bytes(template)
    manifest = root / "manifests" / "registry.ollama.ai" / namespace / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                    "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                "digest": f"sha256:{digest}", "size": len(data)},
                                               {"mediaType": "application/vnd.ollama.image.template",
                                                "digest": f"sha256:{hashlib.sha256(template).hexdigest()}",
                                                "size": len(template)}]}))
    return blob


def test_models_discover_lists_hf_cache_ollama_and_lmstudio_and_adds_without_copying(home, demo, monkeypatch):
    tmp, env = home
    snapshot = hf_cache_repo(tmp / "hub", "someone/tiny-hf", files_of(demo / "tiny-hf"))
    hf_cache_repo(tmp / "hub", "someone/pickled", {"config.json": demo / "tiny-hf/config.json",
                                                   "pytorch_model.bin": demo / "tiny-hf/config.json"})
    ollama = tmp / "ollama"
    blob = ollama_model(ollama, "tinyllama", "latest", demo / "tiny-llama.gguf")
    ollama_model(ollama, "tiny-embed", "q8", demo / "tiny-embed.gguf", namespace="someone")
    studio = tmp / "home" / ".lmstudio" / "models" / "lmstudio-community" / "Tiny-GGUF"
    studio.mkdir(parents=True)
    shutil.copy(demo / "tiny-llama.gguf", studio / "Tiny-Q4_K_M.gguf")
    shutil.copy(demo / "tiny-embed.gguf", studio / "mmproj-Tiny-F16.gguf")
    env = {**env, "OLLAMA_MODELS": str(ollama)}
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama))  # for the server started in this process below
    before = sorted(p for p in tmp.rglob("*") if p.is_file())

    listed = modelyard(env, "models", "--discover", "--json")
    assert listed.returncode == 0, listed.stderr
    found = {f["name"]: f for f in json.loads(listed.stdout)}
    assert set(found) == {"someone/tiny-hf", "someone/pickled", "tinyllama:latest", "someone/tiny-embed:q8",
                          "lmstudio-community/Tiny-GGUF/Tiny-Q4_K_M.gguf"}, "projectors are not models"
    assert (found["someone/tiny-hf"]["source"], found["someone/tiny-hf"]["backend"]) == ("huggingface", "hf")
    assert found["tinyllama:latest"]["path"] == str(blob) and found["tinyllama:latest"]["backend"] == "gguf"
    assert found["someone/pickled"]["backend"] is None and "pickle" in found["someone/pickled"]["problem"]
    assert not any(f["in_registry"] for f in found.values())

    added = modelyard(env, "models", "--discover", "--add", "tinyllama:latest", "--add", "someone/tiny-hf")
    assert added.returncode == 0, added.stderr
    assert "can add" in added.stdout and "added tinyllama:latest" in added.stdout
    entries = {e["id"]: e for e in registry_entries(tmp)}
    assert entries["tinyllama:latest"]["path"] == str(blob), "the Ollama blob is used where it is"
    assert entries["tiny-hf"]["path"] == str(snapshot)
    assert sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != "models.yaml") == \
        [p for p in before if p.name != "models.yaml"], "nothing was copied"
    again = modelyard(env, "models", "--discover", "--json")
    assert {f["name"] for f in json.loads(again.stdout) if f["in_registry"]} == {"tinyllama:latest", "someone/tiny-hf"}
    # the server admits the stores' paths by default and serves the Ollama blob
    with serve(server_dir(tmp), [entries["tinyllama:latest"]]) as served:
        reply = served.client().chat.completions.create(model="tinyllama:latest", messages=HELLO, max_tokens=3)
    assert reply.choices[0].finish_reason in ("length", "stop")


def test_models_lists_the_registry(tmp_path, capsys):
    registry = tmp_path / "models.yaml"
    registry.write_text(REGISTRY_TEXT)
    assert cli_main(["models", "--models", str(registry), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["id"] == "house-chat" and row["backend"] == "fake" and "chat" in row["serves"]


# ---- doctor -----------------------------------------------------------------------------------

def test_doctor_reports_the_device_engines_and_budget(tmp_path, capsys):
    from server.memory import MemoryProbe, default_budget_mb

    registry = tmp_path / "models.yaml"
    registry.write_text(REGISTRY_TEXT)
    assert cli_main(["doctor", "--models", str(registry), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    probe = MemoryProbe()
    assert facts["budget_mb"] == default_budget_mb(probe) and facts["budget_source"] == "default"
    assert facts["registry"] == {"path": str(registry), "ok": True, "models": 1}
    assert set(facts["engines"]) >= {"gguf", "hf", "bnb", "gptq", "diffusers", "faster-whisper", "torch"}
    import llama_cpp

    assert facts["engines"]["gguf"]["gpu"] == bool(llama_cpp.llama_supports_gpu_offload())
    if not probe.gpu:
        assert facts["gpu"] is None and facts["device"] == "cpu"
        assert not any(e["gpu"] for e in facts["engines"].values())
    assert cli_main(["doctor", "--models", str(registry), "--budget-mb", "9000"]) == 0
    text = capsys.readouterr().out
    assert "budget:   9000 MiB (MODELYARD_BUDGET_MB)" in text and "gguf" in text and "registry:" in text
