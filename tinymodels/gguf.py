"""Tiny random llama models in GGUF: a chat model with FIM tokens and a chat template, and an
embedding model. `write_llama` also makes the benchmark-sized file (bench/bench_gguf.py).

Random weights: the text is meaningless, the loading and decoding path is the one a 7B file takes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CHAT_FILE = "tiny-llama.gguf"
EMBED_FILE = "tiny-embed.gguf"

# ChatML-style, with tools and tool results, so the tool-call round trip renders like a real model's.
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call these tools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% endif %}"
    "{% if m.get('tool_calls') %}{{ m['tool_calls'] | tojson }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Control tokens after <unk> <s> </s>; the FIM ids go into the metadata (llama.cpp reads them from there).
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]


def write_llama(path: Path, *, vocab: int = 265, dim: int = 64, layers: int = 2, heads: int = 4,
                ffn: int | None = None, context: int = 2048, dtype=np.float32, fim: bool = True,
                chat_template: str | None = CHAT_TEMPLATE, pooling: bool = False, seed: int = 0,
                kv_heads: int | None = None, q4_0: bool = False, pieces: dict[str, float] | None = None) -> None:
    """A llama-architecture GGUF with an SPM byte-fallback vocabulary of `vocab` tokens; `pieces`
    (text -> merge score) replaces the filler pieces, for tests of tokenization itself.

    `q4_0` stores every matrix as Q4_0 blocks of random nibbles under one small scale, made once per
    shape and reused: a real-size quantized file (an 8B shape is 4.5 GB) written in seconds."""
    import gguf

    ffn = ffn or dim * 2
    rng = np.random.default_rng(seed)
    tokens: list[str] = ["<unk>", "<s>", "</s>", *SPECIAL]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.CONTROL] * len(SPECIAL)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens.append("\u2581")  # the SPM space piece, so spaces decode as spaces
    types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * (3 + len(SPECIAL) + 256) + [-1.0]
    if pieces is None:
        filler = vocab - len(tokens)
        if filler < 0:
            raise ValueError(f"vocab must be at least {len(tokens)}")
        pieces = {f"\u2581w{i}": -float(i + 2) for i in range(filler)}  # ordinary pieces, to reach the size
    vocab = len(tokens) + len(pieces)
    tokens += list(pieces)
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores += list(pieces.values())

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    kv_heads = kv_heads or heads
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if q4_0 else
                         gguf.LlamaFileType.MOSTLY_F16 if dtype == np.float16 else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_eot_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(True)
    if fim:
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, tokens.index("<|fim_prefix|>"))
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, tokens.index("<|fim_suffix|>"))
        writer.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, tokens.index("<|fim_middle|>"))
    if chat_template:
        writer.add_chat_template(chat_template)
    if pooling:
        writer.add_pooling_type(gguf.PoolingType.MEAN)

    blocks: dict[tuple[int, int], np.ndarray] = {}

    def add(name: str, *shape: int) -> None:
        if not q4_0:
            writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(dtype))
            return
        if shape not in blocks:  # 32 weights a block: an f16 scale, then 16 bytes of nibbles
            rows, cols = shape
            block = rng.integers(0, 256, (rows, cols // 32, 18), dtype=np.uint8)
            block[:, :, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
            blocks[shape] = block.reshape(rows, cols // 32 * 18)
        writer.add_tensor(name, blocks[shape], raw_dtype=gguf.GGMLQuantizationType.Q4_0)

    norm = np.ones(dim, dtype=np.float32)
    kv_dim = dim * kv_heads // heads
    add("token_embd.weight", vocab, dim)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        add(f"blk.{i}.attn_q.weight", dim, dim)
        add(f"blk.{i}.attn_k.weight", kv_dim, dim)
        add(f"blk.{i}.attn_v.weight", kv_dim, dim)
        add(f"blk.{i}.attn_output.weight", dim, dim)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
        add(f"blk.{i}.ffn_gate.weight", ffn, dim)
        add(f"blk.{i}.ffn_up.weight", ffn, dim)
        add(f"blk.{i}.ffn_down.weight", dim, ffn)
    writer.add_tensor("output_norm.weight", norm)
    add("output.weight", vocab, dim)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build_file(target: Path, **kwargs) -> Path:
    """Write to a temp file beside `target`, then rename: a half-written model is never used."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(fd)
    try:
        write_llama(Path(tmp), **kwargs)
        shutil.move(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build(root: Path) -> None:
    build_file(root / CHAT_FILE)
    build_file(root / EMBED_FILE, dim=32, layers=1, heads=2, fim=False, chat_template=None, pooling=True, seed=1)
