"""Which files `pull` takes from a repository's listing (pure policy, no network)."""

from __future__ import annotations

import pytest

from server.hub import HubError, Reference, RemoteFile, choose, quant_of

SHA = "0" * 40


def listing(*names: str, size: int = 10) -> list[RemoteFile]:
    return [RemoteFile(name, size) for name in names]


BARTOWSKI = listing("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf", "Meta-Llama-3.1-8B-Instruct-Q4_K_S.gguf",
                    "Meta-Llama-3.1-8B-Instruct-Q8_0.gguf", "Meta-Llama-3.1-8B-Instruct-IQ4_XS.gguf",
                    "Meta-Llama-3.1-8B-Instruct-Q4_K_L.gguf", "README.md")


def test_references_parse_repo_and_quant_or_file():
    assert Reference.parse("bartowski/Llama-GGUF:Q4_K_M") == Reference("bartowski/Llama-GGUF", "Q4_K_M")
    assert Reference.parse("Qwen/Qwen2.5-0.5B") == Reference("Qwen/Qwen2.5-0.5B", None)
    for bad in ("llama3", "a/b/c", "owner/na me"):
        with pytest.raises(HubError, match="OWNER/NAME"):
            Reference.parse(bad)


def test_a_quant_name_picks_exactly_that_file():
    chosen = choose("b/L", SHA, BARTOWSKI, "q4_k_m")
    assert chosen.kind == "gguf" and chosen.model_file == "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    assert [f.path for f in chosen.files] == [chosen.model_file]
    assert chosen.available == ("IQ4_XS", "Q4_K_L", "Q4_K_M", "Q4_K_S", "Q8_0")


def test_without_a_quant_q4_k_m_is_the_default_and_an_unknown_one_lists_the_choices():
    assert choose("b/L", SHA, BARTOWSKI).model_file.endswith("-Q4_K_M.gguf")
    with pytest.raises(HubError, match="IQ4_XS, Q4_K_L, Q4_K_M, Q4_K_S, Q8_0"):
        choose("b/L", SHA, BARTOWSKI, "Q2_K")
    odd = listing("model-a.gguf", "model-b.gguf")
    with pytest.raises(HubError, match="name one"):
        choose("x/y", SHA, odd)


def test_a_file_name_selects_that_file_and_the_projector_comes_along():
    files = listing("gemma-3-4b-it-Q4_K_M.gguf", "mmproj-model-f32.gguf", "mmproj-model-f16.gguf")
    chosen = choose("g/G", SHA, files, "gemma-3-4b-it-Q4_K_M.gguf")
    assert chosen.projector == "mmproj-model-f16.gguf"
    assert [f.path for f in chosen.files] == ["gemma-3-4b-it-Q4_K_M.gguf", "mmproj-model-f16.gguf"]


def test_split_gguf_files_are_refused_clearly():
    files = listing("Q8_0/big-Q8_0-00001-of-00002.gguf", "Q8_0/big-Q8_0-00002-of-00002.gguf", "big-Q4_K_M.gguf")
    with pytest.raises(HubError, match="split"):
        choose("a/big", SHA, files, "Q8_0")


def test_snapshots_take_safetensors_configs_and_tokenizers_only():
    files = listing("config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                    "tokenizer.model", "tokenizer_config.json", "pytorch_model.bin", "original/consolidated.00.pth",
                    "original/params.json", "README.md", ".gitattributes", "onnx/model.onnx", "modeling_x.py")
    chosen = choose("m/M", SHA, files)
    assert chosen.kind == "snapshot"
    assert sorted(f.path for f in chosen.files) == sorted([
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
        "tokenizer_config.json"])


def test_diffusers_snapshots_skip_variants_single_files_and_the_safety_checker():
    files = listing("model_index.json", "v1-5-pruned.safetensors", "unet/config.json",
                    "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                    "unet/diffusion_pytorch_model.non_ema.safetensors", "vae/diffusion_pytorch_model.safetensors",
                    "safety_checker/model.safetensors", "text_encoder/model.safetensors", "tokenizer/vocab.json")
    paths = sorted(f.path for f in choose("r/sd", SHA, files).files)
    assert paths == ["model_index.json", "text_encoder/model.safetensors", "tokenizer/vocab.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]


def test_ctranslate2_model_bin_is_fetched_but_pickle_only_repos_are_refused():
    ct2 = choose("Systran/faster-whisper-small", SHA,
                 listing("config.json", "model.bin", "tokenizer.json", "vocabulary.txt", "README.md"))
    assert sorted(f.path for f in ct2.files) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    with pytest.raises(HubError, match="only pickle weights"):
        choose("old/bert", SHA, listing("config.json", "pytorch_model.bin", "vocab.txt"))
    asked = choose("old/bert", SHA, listing("config.json", "pytorch_model.bin"), include=("*.bin",))
    assert [f.path for f in asked.files] == ["config.json", "pytorch_model.bin"]


def test_quant_names_are_read_from_file_names():
    assert quant_of("Llama-3.2-1B-Instruct-UD-Q4_K_XL.gguf") == "UD-Q4_K_XL"
    assert quant_of("qwen2.5-0.5b-instruct-fp16.gguf") == "FP16"
    assert quant_of("model.BF16.gguf") == "BF16"
    assert quant_of("Phi-3-mini-4k-instruct-q4.gguf") == "Q4"
