"""Random-weight models of real shapes, for the GPU check (scripts/gpu_check.sh): what a 12 GB card
really holds. Nothing can be downloaded there, so they are generated on the spot, each in its real
file format, through the same builders as the tiny demo models.

    scale "full": a Llama-3-8B-shape Q4_0 GGUF (4.6 GB), a Llama-2-7B-shape checkpoint served as NF4,
                 a TinyLlama-1.1B-shape checkpoint (fp16 decode speed), an SD 1.5-shape pipeline,
                 a Whisper large-v2-shape faster-whisper model
    scale "dry": the same set at a few MB (the CPU dry run that `make test` exercises)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# name -> sizes per scale
LLAMA_GGUF = {"full": dict(vocab=128256, dim=4096, layers=32, heads=32, kv_heads=8, ffn=14336, context=8192),
              "dry": dict(vocab=512, dim=128, layers=2, heads=4, kv_heads=2, ffn=256, context=2048)}
HF_LLAMA = {"full-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, max_position_embeddings=4096),
            "full-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                            num_key_value_heads=4, max_position_embeddings=2048),
            "dry": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=2048)}
SD15_UNET = {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "sample_size": 64,
             "cross_attention_dim": 768, "attention_head_dim": 8}
CLIP_L = {"hidden": 768, "intermediate": 3072, "layers": 12, "heads": 12}
WHISPER_LARGE = {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120}


def llama_gguf(path: Path, scale: str) -> Path:
    from tinymodels.gguf import write_llama

    if not path.exists():
        write_llama(path, q4_0=True, **LLAMA_GGUF[scale])
    return path


def hf_llama(out: Path, shape: str) -> Path:
    """A Llama checkpoint in bf16 safetensors, initialised on the GPU when there is one (seconds for 7B)."""
    return _atomic(out, lambda work: _save_llama(work, shape))


def _save_llama(work: Path, shape: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tinymodels.hf import _byte_bpe_tokenizer

    tokenizer = _byte_bpe_tokenizer()
    vocab = 32000 if shape.startswith("full") else len(tokenizer)  # rows past the tokenizer are never sampled
    config = LlamaConfig(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **HF_LLAMA[shape])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = LlamaForCausalLM(config)  # on the device _atomic chose
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(work, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(work)


def _atomic(out: Path, make, scratch: tuple[str, ...] = ()) -> Path:
    """Build into OUT.partial, then rename; `scratch` names sibling folders the builder leaves behind.
    Modules are created on the GPU when there is one: random init of a billion weights on a CPU takes
    longer than the whole check may."""
    if out.exists():
        return out
    import torch

    work = out.with_name(out.name + ".partial")
    for leftover in (work, *(out.parent / name for name in scratch)):
        shutil.rmtree(leftover, ignore_errors=True)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        make(work)
    for name in scratch:
        shutil.rmtree(out.parent / name, ignore_errors=True)
    os.replace(work, out)
    return out


def sd15(out: Path, scale: str) -> Path:
    from tinymodels.media import build_sd

    def make(work: Path) -> None:
        if scale != "full":
            return build_sd(work)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                            sample_size=512)
        return build_sd(work, unet=SD15_UNET, clip=CLIP_L, vae=vae)

    return _atomic(out, make, scratch=("clip-vocab",))


def whisper(out: Path, scale: str) -> Path:
    from tinymodels.media import build_whisper

    # "hf": the transformers copy it is converted from
    return _atomic(out, lambda work: build_whisper(work, **(WHISPER_LARGE if scale == "full" else {})),
                   scratch=("hf",))


def build(root: Path, scale: str) -> dict[str, Path]:
    """Every model the GPU check measures, built once under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    full = scale == "full"
    return {
        "llama-8b-q4": llama_gguf(root / "llama-8b-q4_0.gguf", scale),
        "llama-7b": hf_llama(root / "llama-7b", "full-7b" if full else "dry"),
        "llama-1b": hf_llama(root / "llama-1b", "full-1b" if full else "dry"),
        "sd15": sd15(root / "sd15", scale),
        "whisper-large": whisper(root / "whisper" / "whisper-large", scale),
    }
