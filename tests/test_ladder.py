"""The fit ladder and each engine's rungs, on real file metadata (GGUF tensors, tiny pipelines)."""

from __future__ import annotations

import dataclasses

import pytest
from gguf import GGUFReader

from backends.diffusion.spec import DiffusionSpec
from backends.fake.spec import FakeOptions, FakeSpec
from backends.gguf.file import GgufFile, _tensor_bytes
from backends.gguf.spec import GgufOptions, GgufSpec
from backends.plan import MIB, Device
from backends.spec import shrink_context
from backends.whisper.spec import WhisperOptions, WhisperSpec
from server import ladder
from server.registry import RegistryError, parse_registry
from tinymodels import build_all
from tinymodels.gguf import write_llama

GPU = Device(kind="cuda", runtime_mb=300)


def plain_need(rung, estimate) -> float:
    return estimate.total_mb


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A llama GGUF with 6 blocks of real tensors (f32, ~2 MB)."""
    path = tmp_path_factory.mktemp("ladder") / "six.gguf"
    write_llama(path, vocab=512, dim=128, layers=6, heads=4, context=32768)
    return path


@pytest.fixture(scope="module")
def models_root():
    return build_all()


def block_bytes(path) -> dict[str, int]:
    """Tensor bytes by llama.cpp's placement group, read straight from the file."""
    groups: dict[str, int] = {}
    for tensor in GGUFReader(path).tensors:
        group = tensor.name.split(".")[1] if tensor.name.startswith("blk.") else tensor.name.split(".")[0]
        groups[group] = groups.get(group, 0) + int(tensor.n_bytes)
    return groups


def test_gguf_tensor_sizes_per_layer_match_the_file(gguf_file):
    tensors = GgufFile.read(gguf_file).tensors
    groups = block_bytes(gguf_file)
    assert tensors.layers == tuple(groups[str(i)] for i in range(6))
    assert tensors.output == groups["output"] + groups["output_norm"]
    assert tensors.input == groups["token_embd"]


def test_tied_embeddings_count_on_the_output_layer_too():
    class T:
        def __init__(self, name, n_bytes):
            self.name, self.n_bytes = name, n_bytes

    tensors = _tensor_bytes([T("token_embd.weight", 100), T("blk.0.attn_q.weight", 10), T("output_norm.weight", 1)])
    assert tensors == type(tensors)((10,), 101, 100)


def test_partial_offload_puts_the_output_layer_and_the_last_blocks_on_the_gpu(gguf_file):
    """llama.cpp: with n_gpu_layers = k, the output layer and the last k-1 blocks are on the GPU;
    the input embeddings never are; each block's KV cache sits with its block."""
    spec = GgufSpec(id="six", backend="gguf", path=gguf_file, options=GgufOptions(n_ctx=4096))
    plan = spec.resolve(GPU)
    groups = block_bytes(gguf_file)
    kv_per_block = plan.kv_bytes_per_token * 4096 / 6
    for k in range(0, 7):
        estimate = dataclasses.replace(plan, n_gpu_layers=k).estimate()
        on_gpu = sum(groups[str(i)] for i in range(6 - max(k - 1, 0), 6))
        on_gpu += groups["output"] + groups["output_norm"] if k else 0
        assert estimate.weights_mb == pytest.approx(on_gpu / MIB)
        assert estimate.kv_cache_mb == pytest.approx(kv_per_block * max(k - 1, 0) / MIB)
        assert estimate.weights_mb + estimate.host_mb == pytest.approx((plan.file_bytes + 6 * kv_per_block) / MIB
                                                                       - estimate.kv_cache_mb)
    full = plan.estimate()  # n_gpu_layers -1: everything but the input embeddings
    assert full.weights_mb == pytest.approx((plan.file_bytes - groups["token_embd"]) / MIB)


def test_the_layer_split_is_the_most_layers_whose_device_part_fits(gguf_file):
    spec = GgufSpec(id="six", backend="gguf", path=gguf_file, options=GgufOptions(n_ctx=4096))
    plan = spec.resolve(GPU)
    splits = set()
    for room in (300.5, *range(348, 366), plan.estimate().total_mb - 0.01):
        layers = plan.offload_split(room)
        splits.add(layers)
        if layers is None:
            assert dataclasses.replace(plan, n_gpu_layers=1).estimate().total_mb > room
            continue
        assert dataclasses.replace(plan, n_gpu_layers=layers).estimate().total_mb <= room
        if layers < 6:
            assert dataclasses.replace(plan, n_gpu_layers=layers + 1).estimate().total_mb > room
    assert splits == {None, 1, 2, 3, 4, 5, 6}  # every split is reached as the room grows


def test_a_gguf_too_large_for_its_context_on_a_gpu_shrinks_the_context_then_offloads(gguf_file):
    spec = GgufSpec(id="six", backend="gguf", path=gguf_file, min_context=2048, options=GgufOptions(n_ctx=32768))
    full = spec.resolve(GPU).estimate().total_mb
    at_min = dataclasses.replace(spec.resolve(GPU), context_length=2048).estimate().total_mb
    context = ladder.climb(spec, GPU, (full + at_min) / 2, plain_need)
    assert context.chosen.name == "context" and 2048 < context.chosen.plan.context_length < 32768
    assert context.chosen.placement == f"context; n_ctx={context.chosen.plan.context_length}"
    offload = ladder.climb(spec, GPU, at_min - 1, plain_need)
    assert [r.name for r in offload.rungs] == ["full", "context", "offload"]
    assert offload.chosen.name == "offload" and offload.chosen.plan.context_length == 2048
    layers = offload.chosen.plan.n_gpu_layers
    assert 1 <= layers <= 6 and offload.chosen.placement == f"offload; n_gpu_layers={layers}/7"
    cpu = ladder.climb(spec, GPU, 300.1, plain_need)  # not even the output layer beside the CUDA context
    assert cpu.chosen.name == "cpu" and cpu.chosen.plan.device == "cpu" and cpu.chosen.need_mb == 0


def test_on_a_cpu_only_machine_the_gguf_ladder_has_only_its_context_rung(gguf_file):
    spec = GgufSpec(id="six", backend="gguf", path=gguf_file, options=GgufOptions(n_ctx=32768))
    cpu = Device(kind="cpu", runtime_mb=60)
    tried = ladder.climb(spec, cpu, 1, plain_need)
    assert [r.name for r in tried.rungs] == ["full", "context"] and tried.chosen is None


def test_the_ladder_stops_at_the_first_rung_that_fits_unless_asked_for_all(gguf_file):
    spec = GgufSpec(id="six", backend="gguf", path=gguf_file, options=GgufOptions(n_ctx=4096))
    assert [r.name for r in ladder.climb(spec, GPU, 10_000, plain_need).rungs] == ["full"]
    every = ladder.climb(spec, GPU, 10_000, plain_need, every_rung=True)
    assert [r.name for r in every.rungs] == ["full", "context", "offload", "cpu"]
    assert every.below(every.chosen).name == "context"


def test_shrinking_the_context_finds_the_largest_that_fits():
    spec = FakeSpec(id="f", backend="fake", options=FakeOptions(memory_mb=100, kv_mb_per_1k=10, context_length=65536))
    plan = spec.resolve(Device())
    shrunk = shrink_context(plan, 1024, room_mb=400)
    assert shrunk.context_length == 29952  # 100 + 299.52 MiB; one more step of 256 would not fit
    assert shrink_context(plan, 1024, room_mb=50).context_length == 1024  # the floor, for the rungs below
    assert shrink_context(dataclasses.replace(plan, context_length=1024), 1024, 400) is None


def test_a_whisper_model_too_large_in_float32_takes_a_lighter_compute_type(models_root):
    spec = WhisperSpec(id="w", backend="faster-whisper", path=models_root / "tiny-whisper", fit=("compute",),
                       options=WhisperOptions(compute_type="float32"))
    cpu = Device(kind="cpu", runtime_mb=0)
    full = spec.resolve(cpu).estimate().total_mb
    chosen = ladder.climb(spec, cpu, full - 0.1, plain_need).chosen
    assert chosen.name == "compute" and chosen.plan.compute_type == "int8"
    assert chosen.placement == "compute; compute_type=int8"


def test_a_diffusers_pipeline_too_large_for_the_gpu_offloads_all_but_its_largest_component(models_root):
    spec = DiffusionSpec(id="sd", backend="diffusers", path=models_root / "tiny-sd", fit=("offload",))
    plan = spec.resolve(GPU)
    parts = plan.component_mb()
    chosen = ladder.climb(spec, GPU, plan.estimate().total_mb - 0.01, plain_need).chosen
    assert chosen.name == "offload" and chosen.plan.cpu_offload
    assert chosen.estimate.weights_mb == pytest.approx(max(parts.values()))
    assert chosen.estimate.host_mb == pytest.approx(sum(parts.values()) - max(parts.values()))


def test_the_fit_ladder_is_on_by_default_for_gguf_only_and_refuses_rungs_an_engine_cannot_take(tmp_path):
    entries = [{"id": "g", "backend": "gguf", "path": str(tmp_path / "x.gguf")},
               {"id": "f", "backend": "fake"}]
    registry = parse_registry({"models": entries}, tmp_path / "models.yaml")
    assert registry.get("g").fit_rungs == ("context", "offload", "cpu") and registry.get("f").fit_rungs == ()
    with pytest.raises(RegistryError, match="offload is not a rung fake models can take"):
        parse_registry({"models": [{"id": "f", "backend": "fake", "fit": ["offload"]}]}, tmp_path / "models.yaml")
