"""Tiny random llama models in GGUF: a chat model with FIM tokens and a chat template, and an
embedding model. `write_llama` also makes the benchmark-sized file (bench/bench_gguf.py).

Random weights: the text is meaningless, the loading and decoding path is the one a 7B file takes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinymodels import is_current, stamp
from tinymodels.tools import TOOL_CLOSE, TOOL_OPEN, TOOLS_TEMPLATE

CHAT_FILE = "tiny-llama.gguf"
EMBED_FILE = "tiny-embed.gguf"
RERANK_FILE = "tiny-rerank.gguf"

# ChatML with Hermes/Qwen tool calls, so tools render and calls parse as with a real Qwen model.
CHAT_TEMPLATE = TOOLS_TEMPLATE
# 2: the tool-call markers are the last two tokens (user-defined: text the detokenizer shows).
CHAT_VERSION = 2

# Control tokens after <unk> <s> </s>; the FIM ids go into the metadata (llama.cpp reads them from there).
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]


def write_llama(path: Path, *, vocab: int = 265, dim: int = 64, layers: int = 2, heads: int = 4,
                ffn: int | None = None, context: int = 2048, dtype=np.float32, fim: bool = True,
                chat_template: str | None = CHAT_TEMPLATE, pooling: bool = False, seed: int = 0,
                kv_heads: int | None = None, q4_0: bool = False, pieces: dict[str, float] | None = None) -> None:
    """A llama-architecture GGUF with an SPM byte-fallback vocabulary of `vocab` tokens (then the two
    tool-call markers, when the template teaches them); `pieces`
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
    # A template that teaches tool calls gets its markers as single tokens (user-defined: text the
    # detokenizer shows, as Qwen's are), after every other token: ids and weights stay as before.
    markers = [TOOL_OPEN, TOOL_CLOSE] if chat_template and TOOL_OPEN in chat_template else []
    tokens += markers
    types += [gguf.TokenType.USER_DEFINED] * len(markers)
    scores += [0.0] * len(markers)

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

    def add(name: str, *shape: int, extra_rows: int = 0) -> None:
        if not q4_0:
            weights = rng.standard_normal(shape)
            if extra_rows:  # drawn apart, so the other tensors' draws do not move
                weights = np.concatenate([weights, marker_rng.standard_normal((extra_rows, *shape[1:]))])
            writer.add_tensor(name, (weights * 0.05).astype(dtype))
            return
        shape = (shape[0] + extra_rows, *shape[1:])
        if shape not in blocks:  # 32 weights a block: an f16 scale, then 16 bytes of nibbles
            rows, cols = shape
            block = rng.integers(0, 256, (rows, cols // 32, 18), dtype=np.uint8)
            block[:, :, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
            blocks[shape] = block.reshape(rows, cols // 32 * 18)
        writer.add_tensor(name, blocks[shape], raw_dtype=gguf.GGMLQuantizationType.Q4_0)

    norm = np.ones(dim, dtype=np.float32)
    kv_dim = dim * kv_heads // heads
    marker_rng = np.random.default_rng(seed + 1)
    add("token_embd.weight", vocab, dim, extra_rows=len(markers))
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
    add("output.weight", vocab, dim, extra_rows=len(markers))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_bert_reranker(source: Path, path: Path) -> None:
    """The tiny Hugging Face cross-encoder (tinymodels/hf.py) converted to GGUF as llama.cpp reads a BERT
    reranker: WordPiece vocabulary in its phantom-space spelling, the pooler as `cls`, the classifier
    as `cls.output`, rank pooling. Same weights, so both engines score a pair alike."""
    import json

    import gguf
    from safetensors.numpy import load_file

    config = json.loads((source / "config.json").read_text())
    weights = load_file(source / "model.safetensors")
    vocab = sorted(json.loads((source / "tokenizer.json").read_text())["model"]["vocab"].items(),
                   key=lambda item: item[1])
    ids = dict(vocab)

    def special(token: str) -> bool:
        return token.startswith("[") and token.endswith("]")

    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    writer.add_token_list([t if special(t) else t[2:] if t.startswith("##") else "\u2581" + t for t, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if special(t) else gguf.TokenType.NORMAL for t, _ in vocab])
    writer.add_token_type_count(config.get("type_vocab_size", 2))
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)  # BERT frames a pair [CLS] a [SEP] b [SEP]; XLM-R's </s></s> needs it on

    def tensor(name: str, key: str) -> None:
        writer.add_tensor(name, weights[key].astype(np.float32))

    tensor("token_embd.weight", "bert.embeddings.word_embeddings.weight")
    tensor("token_types.weight", "bert.embeddings.token_type_embeddings.weight")
    tensor("position_embd.weight", "bert.embeddings.position_embeddings.weight")
    layers = [("attn_q", "attention.self.query"), ("attn_k", "attention.self.key"), ("attn_v", "attention.self.value"),
              ("attn_output", "attention.output.dense"), ("attn_output_norm", "attention.output.LayerNorm"),
              ("ffn_up", "intermediate.dense"), ("ffn_down", "output.dense"), ("layer_output_norm", "output.LayerNorm")]
    pairs = [("token_embd_norm", "bert.embeddings.LayerNorm"), ("cls", "bert.pooler.dense"),
             ("cls.output", "classifier")]
    pairs += [(f"blk.{i}.{ours}", f"bert.encoder.layer.{i}.{theirs}")
              for i in range(config["num_hidden_layers"]) for ours, theirs in layers]
    for ours, theirs in pairs:
        tensor(f"{ours}.weight", f"{theirs}.weight")
        tensor(f"{ours}.bias", f"{theirs}.bias")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build_file(target: Path, write: Callable[[Path], None] | None = None, version: int = 1, **kwargs) -> Path:
    """Write to a temp file beside `target`, then rename: a half-written model is never used."""
    if is_current(target, version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(fd)
    try:
        if write is None:
            write_llama(Path(tmp), **kwargs)
        else:
            write(Path(tmp))
        shutil.move(tmp, target)
        if version > 1:
            stamp(target, version).touch()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def build(root: Path) -> None:
    from tinymodels import hf

    build_file(root / CHAT_FILE, version=CHAT_VERSION)
    build_file(root / EMBED_FILE, dim=32, layers=1, heads=2, fim=False, chat_template=None, pooling=True, seed=1)
    hf.build_reranker(root)
    build_file(root / RERANK_FILE, lambda tmp: write_bert_reranker(root / hf.RERANK_DIR, tmp))
