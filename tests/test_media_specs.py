"""Image and speech model specs: memory estimates from file headers, size rules, registry checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from backends import safetensors
from backends.diffusion.spec import DiffusionOptions, parse_size
from backends.plan import Device
from server.registry import RegistryError, load_registry
from tinymodels import DEFAULT_ROOT, media

GPU = Device(kind="cuda")


@pytest.fixture(scope="module")
def root():
    media.build(DEFAULT_ROOT)
    return DEFAULT_ROOT


def registry_of(tmp_path: Path, models: list[dict], allowed: list[Path] | None = None):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return load_registry(path, allowed)


def test_diffusion_estimate_is_weights_at_runtime_width_plus_activations(root, tmp_path):
    spec = {"id": "sd", "backend": "diffusers", "path": str(root / "tiny-sd")}
    gpu = next(iter(registry_of(tmp_path, [{**spec, "options": {"max_side": 512}}]))).resolve(GPU)
    cpu = next(iter(registry_of(tmp_path, [{**spec, "options": {"max_side": 512, "device": "cpu"}}]))).resolve(GPU)
    params = sum(sum(safetensors.parameters(p).values()) for p in gpu.weight_files)
    assert {p.parent.name for p in gpu.weight_files} == {"unet", "vae", "text_encoder"}
    # Activations: 1536 MiB at 512x512 fp16 for a 320-wide UNet, scaled by this UNet's width (8).
    width = json.loads((root / "tiny-sd" / "unet" / "config.json").read_text())["block_out_channels"][0]
    assert int(gpu.estimate().model_mb) == int(params * 2 / 2**20 + 1536 * width / 320)
    assert int(cpu.estimate().model_mb) == int(params * 4 / 2**20 + 1536 * width / 320 * 2)
    small = next(iter(registry_of(tmp_path, [{**spec, "options": {"max_side": 256}}]))).resolve(GPU)
    assert small.estimate().model_mb < gpu.estimate().model_mb  # fewer pixels, fewer activations


def test_whisper_estimate_follows_model_file_and_compute_type(root, tmp_path):
    spec = {"id": "w", "backend": "faster-whisper", "path": str(root / "tiny-whisper")}
    size_mb = (root / "tiny-whisper" / "model.bin").stat().st_size / 2**20
    as_stored = next(iter(registry_of(tmp_path, [{**spec, "options": {"beam_size": 5}}]))).resolve(GPU)
    int8 = next(iter(registry_of(tmp_path, [{**spec, "options": {"beam_size": 5, "compute_type": "int8"}}])))
    assert int(as_stored.estimate().model_mb) == int(size_mb * 1.25 + 32)
    assert int(int8.resolve(GPU).estimate().model_mb) == int(size_mb * 0.5 * 1.25 + 32)


@pytest.mark.parametrize(("size", "problem"), [
    ("64x64", None), ("512x384", None), ("60x64", "multiples of 8"), ("16x64", "between"),
    ("2048x64", "between"), ("1024x1024", "pixels"),
])
def test_size_rules(size, problem):
    options = DiffusionOptions(min_side=32, max_side=1024, max_pixels=512 * 512)
    error = options.size_error(*parse_size(size))
    assert (error is None) if problem is None else (problem in error)


def test_an_allow_list_of_sizes_wins():
    options = DiffusionOptions(sizes=("512x512", "768x512"))
    assert options.size_error(768, 512) is None
    assert "not one of" in options.size_error(512, 768)


def test_unknown_scheduler_or_option_is_refused_with_the_field(root, tmp_path):
    spec = {"id": "sd", "backend": "diffusers", "path": str(root / "tiny-sd")}
    with pytest.raises(RegistryError, match="scheduler"):
        registry_of(tmp_path, [{**spec, "options": {"scheduler": "os.system"}}])
    with pytest.raises(RegistryError, match="custom_pipeline"):
        registry_of(tmp_path, [{**spec, "options": {"custom_pipeline": "evil"}}])
    with pytest.raises(RegistryError, match="default_size"):
        registry_of(tmp_path, [{**spec, "options": {"default_size": "huge"}}])


def test_model_paths_outside_the_allowed_dirs_are_refused(root, tmp_path):
    for spec in ({"id": "sd", "backend": "diffusers", "path": str(root / "tiny-sd")},
                 {"id": "w", "backend": "faster-whisper", "path": str(root / "tiny-whisper")}):
        with pytest.raises(RegistryError, match="outside the allowed"):
            registry_of(tmp_path, [spec], allowed=[tmp_path])


def test_the_default_registry_serves_demo_sd_and_demo_whisper():
    registry = load_registry(Path(__file__).resolve().parent.parent / "models.yaml")
    assert registry.resolve("demo-sd").backend == "diffusers"
    assert registry.resolve("demo-whisper").backend == "faster-whisper"
    assert registry.resolve("whisper-1").id == "demo-whisper"
