"""Tiny random LoRA adapters for the demo text models: two llama.cpp LoRA GGUFs for the demo GGUF
llama, two PEFT adapters for the demo Hugging Face llama (one of them as QLoRA training leaves it,
for the 4-bit base), and broken ones the tests refuse.

Random, non-zero A and B matrices: an adapter visibly changes the base's output, which is all a test
needs to tell them apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinymodels import build_dir
from tinymodels.gguf import CHAT_FILE, build_file

GGUF_ADAPTERS = ("tiny-llama-lora-a.gguf", "tiny-llama-lora-b.gguf")
GGUF_MISMATCHED = "tiny-llama-lora-mismatched.gguf"  # shapes of another model: llama.cpp refuses it
HF_ADAPTERS = ("tiny-hf-lora-a", "tiny-hf-lora-b")
HF_QLORA = "tiny-hf-qlora"  # trained on the 4-bit base (bitsandbytes nf4), as QLoRA does
HF_MISMATCHED = "tiny-hf-lora-mismatched"  # targets a module the demo llama does not have
SEED = 777


def build(root: Path) -> None:
    from tinymodels import gguf, hf

    root.mkdir(parents=True, exist_ok=True)
    gguf.build(root)
    hf.build(root)
    dim = _gguf_dim(root / CHAT_FILE)
    for i, name in enumerate(GGUF_ADAPTERS):
        build_file(root / name, lambda tmp, i=i: write_gguf_lora(tmp, dim=dim, seed=SEED + i))
    build_file(root / GGUF_MISMATCHED, lambda tmp: write_gguf_lora(tmp, dim=dim // 2, seed=SEED))
    for i, name in enumerate(HF_ADAPTERS):
        build_dir(root / name, lambda out, i=i: write_peft_lora(root / hf.LLM_DIR, out, seed=SEED + i))
    build_dir(root / HF_QLORA, lambda out: write_peft_lora(root / hf.LLM_DIR, out, seed=SEED + 5, qlora=True))
    build_dir(root / HF_MISMATCHED, lambda out: write_peft_lora(root / hf.LLM_DIR, out, seed=SEED,
                                                                targets=("c_attn",)))


def _gguf_dim(path: Path) -> int:
    from gguf import GGUFReader

    return int(GGUFReader(path).fields["llama.embedding_length"].contents())


def write_gguf_lora(path: Path, *, dim: int, layers: int = 2, rank: int = 4, alpha: float = 8.0,
                    targets: tuple[str, ...] = ("attn_q", "attn_v"), seed: int = SEED) -> None:
    """A llama.cpp LoRA adapter (as convert_lora_to_gguf.py writes one) for a llama of width `dim`:
    `<weight>.lora_a` (rank x in) and `.lora_b` (out x rank) per adapted weight."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for block in range(layers):
        for target in targets:
            name = f"blk.{block}.{target}.weight"
            writer.add_tensor(f"{name}.lora_a", (rng.standard_normal((rank, dim)) * 0.5).astype(np.float32))
            writer.add_tensor(f"{name}.lora_b", (rng.standard_normal((dim, rank)) * 0.5).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_peft_lora(base: Path, out: Path, *, seed: int, qlora: bool = False,
                    targets: tuple[str, ...] = ("q_proj", "v_proj")) -> None:
    """A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) for `base`.
    Random non-zero B (`init_lora_weights=False`), so the adapter changes the output. `qlora`: made on
    the base loaded in 4-bit nf4 by bitsandbytes, as QLoRA training does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if "c_attn" in targets:  # an adapter for another architecture: written by hand, PEFT would refuse it
        _write_foreign(out, targets)
        return
    torch.manual_seed(seed)
    quantized = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float32),
                 "device_map": "cpu"} if qlora else {}
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True, **quantized)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), task_type="CAUSAL_LM",
                        init_lora_weights=False, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # wide enough that greedy decoding differs from the base's
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.mul_(4.0)
    peft_model.save_pretrained(out, safe_serialization=True)


def _write_foreign(out: Path, targets: tuple[str, ...]) -> None:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "target_modules": list(targets),
        "base_model_name_or_path": "gpt2", "init_lora_weights": False, "bias": "none"}))
    save_file({f"base_model.model.transformer.h.0.attn.{t}.lora_A.weight": torch.zeros(4, 768) for t in targets},
              str(out / "adapter_model.safetensors"))
