"""Tiny Hugging Face demo models: a Llama causal LM (fp16), a GPTQ copy of it, a BERT embedder and a
BERT cross-encoder reranker.

bitsandbytes 4/8-bit need no files of their own: they load the fp16 directory with quantization
options. Each model is built in a temporary directory and renamed into place, so a half-built model
is never used; a model already present is left alone.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path

from tinymodels import build_dir
from tinymodels.tools import TOOL_CLOSE, TOOL_OPEN, TOOLS_TEMPLATE

LLM_DIR, GPTQ_DIR, EMBED_DIR, RERANK_DIR = "tiny-hf", "tiny-gptq", "tiny-embed-hf", "tiny-rerank-hf"

# ChatML with Hermes/Qwen tool calls, so tools render and calls parse as with a real Qwen model.
CHAT_TEMPLATE = "{{ bos_token }}" + TOOLS_TEMPLATE
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"]
VOCAB = 1024  # large enough that a random model rarely samples </s> by chance
# 2: the tool-call tokens (TOOL_OPEN, TOOL_CLOSE) take the last two ids and the template renders tools.
LLM_VERSION = 2
SEED = 1234


def build(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    build_dir(root / LLM_DIR, _build_llm, LLM_VERSION)
    build_dir(root / GPTQ_DIR, lambda out: _build_gptq(root / LLM_DIR, out), LLM_VERSION)
    build_dir(root / EMBED_DIR, _build_embedder)
    build_reranker(root)


def build_reranker(root: Path) -> None:
    """The cross-encoder alone (the GGUF builder converts it)."""
    root.mkdir(parents=True, exist_ok=True)
    build_dir(root / RERANK_DIR, _build_reranker)


def _corpus(lines: int = 400) -> list[str]:
    """Pseudo-words from syllables: enough distinct pairs for the BPE trainer to fill its vocabulary."""
    rng = random.Random(SEED)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(600)]
    base = ["The quick brown fox jumps over the lazy dog.", "Local models answer questions about memory.",
            "def add(a, b):\n    return a + b\n", '{"name": "tiny", "size": 3, "ok": true}']
    return base + [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(lines)]


def _byte_bpe_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # Not special, as in Qwen's tokenizer: the call markers are text the detokenizer shows.
    tok.add_tokens([AddedToken(TOOL_OPEN, special=False, normalized=False),
                    AddedToken(TOOL_CLOSE, special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", additional_special_tokens=SPECIALS[3:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_llm(out: Path, hidden: int = 64, layers: int = 2, heads: int = 4) -> None:
    """The demo Llama; bench/bench_warm.py makes a larger one of the same kind."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    tokenizer = _byte_bpe_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    # Random init gives near-flat logits; widen them so sampling and greedy decoding differ visibly.
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)
    model = model.to(torch.float16)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _build_gptq(source: Path, out: Path) -> None:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # its pools fail on a 2-core machine otherwise
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    generator = torch.Generator().manual_seed(SEED)
    calib = []
    for line in _corpus(64)[:32]:
        ids = tokenizer(line * 4, return_tensors="pt").input_ids[:, :64]
        if ids.shape[1] < 64:
            ids = torch.randint(0, len(tokenizer), (1, 64), generator=generator)
        calib.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    # gptqmodel writes per-layer logs under ./logs: keep them out of the caller's directory
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        model = GPTQModel.load(str(source), QuantizeConfig(bits=4, group_size=32))
        model.quantize(calib)
        model.save(str(out))
    tokenizer.save_pretrained(out)


def _build_embedder(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    fast = _wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=fast.pad_token_id)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)


def _build_reranker(out: Path) -> None:
    """A cross-encoder: BERT reading "[CLS] query [SEP] document [SEP]" into one relevance logit."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(SEED + 1)
    fast = _wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=fast.pad_token_id,
                        num_labels=1)
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)


def _wordpiece_tokenizer():
    """BERT's WordPiece tokenizer trained on the tiny corpus, with its [CLS]/[SEP] pair template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_corpus(), trainer=trainers.WordPieceTrainer(vocab_size=512, special_tokens=specials,
                                                                         show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
