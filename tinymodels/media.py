"""Tiny image and speech models: a Stable Diffusion pipeline and a faster-whisper (CTranslate2) Whisper.

Random weights in the real formats: `tiny-sd` is a diffusers directory (safetensors) that
StableDiffusionPipeline.from_pretrained loads, `tiny-sd.safetensors` the same weights as one
original-layout checkpoint (from_single_file), `tiny-sdxl` an SDXL-layout pipeline; `tiny-whisper` is a CTranslate2 directory converted
from a tiny transformers Whisper with Whisper's own multilingual token layout (51865 ids), so
language detection, the translate task and word timestamps all take their real code paths.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# Whisper v2's language tokens, in id order from 50259 (the order is part of the format).
WHISPER_LANGUAGES = ["en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su"]
_TEXT_VOCAB = 50257  # GPT-2 byte-level ids 0..50256, then the specials
_MULTILINGUAL_VOCAB = 51865  # CTranslate2 treats >= 51865 ids as multilingual


def build(root: Path) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _atomic(root / "tiny-sd", build_sd)
    _atomic(root / "tiny-sdxl", build_sdxl)
    _atomic(root / "tiny-whisper", build_whisper)
    if not (root / "tiny-sd.safetensors").is_file():  # the same weights as one original-layout checkpoint
        build_sd_single_file(root / "tiny-sd", root / "tiny-sd.safetensors")


def _atomic(target: Path, builder: Callable[[Path], None]) -> None:
    """Build into a sibling temp dir, then rename: a half-built model is never seen at `target`."""
    if target.is_dir():
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        builder(staging / "model")
        try:
            (staging / "model").rename(target)
        except OSError:
            if not target.is_dir():  # someone else finishing first is fine; anything else is not
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- Stable Diffusion ------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies contain)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def _clip_parts(work: Path, hidden: int = 16, intermediate: int = 32, layers: int = 1, heads: int = 2):
    """A byte-level CLIP tokenizer and a text-encoder config factory (one tiny CLIP for SD and SDXL;
    tinymodels/shapes.py asks for CLIP ViT-L's sizes)."""
    from transformers import CLIPTextConfig, CLIPTokenizer

    work.mkdir()
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab))
    (work / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(work / "vocab.json"), str(work / "merges.txt"), model_max_length=77)

    def config() -> CLIPTextConfig:
        return CLIPTextConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                              num_attention_heads=heads, max_position_embeddings=77, vocab_size=len(vocab),
                              bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                              projection_dim=hidden)

    return tokenizer, config


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4,
                         sample_size=32)


TINY_UNET = {"block_out_channels": (8, 16), "layers_per_block": 1, "sample_size": 16,
             "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 16, "norm_num_groups": 4,
             "attention_head_dim": 2}


def build_sd(out: Path, unet_channels: tuple[int, ...] = (8, 16), norm_groups: int = 4, unet: dict | None = None,
             clip: dict | None = None, vae=None) -> None:
    """A Stable Diffusion 1.x pipeline: tiny by default (a wider UNet with `unet_channels`); tinymodels/shapes.py
    passes SD 1.5's whole UNet, text encoder and VAE."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    out.mkdir(parents=True)
    tokenizer, text_config = _clip_parts(out.parent / "clip-vocab", **(clip or {}))
    pipe = StableDiffusionPipeline(
        vae=vae if vae is not None else _tiny_vae(), text_encoder=CLIPTextModel(text_config()), tokenizer=tokenizer,
        unet=UNet2DConditionModel(**(unet or {**TINY_UNET, "block_out_channels": unet_channels,
                                               "norm_num_groups": norm_groups})),
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


def build_sdxl(out: Path) -> None:
    """SDXL's layout: two text encoders (the second with a projection) and size/crop conditioning."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    out.mkdir(parents=True)
    tokenizer, text_config = _clip_parts(out.parent / "clip-vocab")
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=2, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 16)
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(text_config()),
        text_encoder_2=CLIPTextModelWithProjection(text_config()), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=EulerDiscreteScheduler())
    pipe.save_pretrained(out, safe_serialization=True)


# ---- Whisper (faster-whisper / CTranslate2) ----------------------------------------------------


def whisper_specials() -> list[str]:
    return ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in WHISPER_LANGUAGES),
            "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
            "<|notimestamps|>"]


def _whisper_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    # Filler entries stand where GPT-2's merged tokens sit, so the specials get Whisper's real ids.
    vocab.update({f"<filler{i}>": i for i in range(256, _TEXT_VOCAB)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in whisper_specials()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def build_whisper(out: Path, d_model: int = 64, layers: int = 1, heads: int = 2, ffn: int | None = None,
                  quantization: str = "float16") -> None:
    """A faster-whisper directory: tiny by default; tinymodels/shapes.py passes large-v2's sizes."""
    ffn = ffn or d_model * 2
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = _whisper_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in whisper_specials()}
    assert ids["<|notimestamps|>"] == 50363, ids["<|notimestamps|>"]
    config = WhisperConfig(
        vocab_size=_MULTILINGUAL_VOCAB, num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_source_positions=1500, max_target_positions=448, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"])
    model = WhisperForConditionalGeneration(config)
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"], max_length=448,
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in WHISPER_LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        suppress_tokens=[], begin_suppress_tokens=[220, ids["<|endoftext|>"]],
        alignment_heads=[[0, 0], [0, 1]])
    model.generation_config = generation
    hf_dir = out.parent / "hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)
    TransformersConverter(str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
        str(out), quantization=quantization)
    # CTranslate2 4.8 treats a Whisper vocabulary as multilingual only when it holds an empty-string
    # token (found by experiment); id 50256 is one of our fillers, so it becomes that token.
    vocabulary = json.loads((out / "vocabulary.json").read_text())
    vocabulary[_TEXT_VOCAB - 1] = ""
    (out / "vocabulary.json").write_text(json.dumps(vocabulary))


# ---- Stable Diffusion as one original-layout (LDM) .safetensors checkpoint ----------------------


def _unet_to_ldm(key: str, layers: int, up_has_attention: dict[int, bool]) -> str:
    """One diffusers UNet key -> its name in an original SD checkpoint (inverse of diffusers' converter)."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for new, old in fixed.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    resnet = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
              ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
    parts = key.split(".")
    if parts[0] == "mid_block":
        index = int(parts[2]) * 2 + (1 if parts[1] == "attentions" else 0)
        rest = ".".join(parts[3:])
        if parts[1] == "resnets":
            for new, old in resnet:
                rest = rest.replace(new, old)
        return f"middle_block.{index}.{rest}"
    block = int(parts[1])
    if parts[0] == "down_blocks":
        if parts[2] == "downsamplers":
            return f"input_blocks.{1 + block * (layers + 1) + layers}.0.op.{parts[-1]}"
        where = f"input_blocks.{1 + block * (layers + 1) + int(parts[3])}"
    else:
        if parts[2] == "upsamplers":
            slot = 2 if up_has_attention.get(block) else 1
            return f"output_blocks.{block * (layers + 1) + layers}.{slot}.conv.{parts[-1]}"
        where = f"output_blocks.{block * (layers + 1) + int(parts[3])}"
    rest = ".".join(parts[4:])
    if parts[2] == "resnets":
        for new, old in resnet:
            rest = rest.replace(new, old)
        return f"{where}.0.{rest}"
    return f"{where}.1.{rest}"


def _vae_to_ldm(key: str, up_blocks: int) -> str:
    fixed = {"conv_norm_out": "norm_out"}
    parts = key.split(".")
    coder = parts[0]
    if coder in ("quant_conv", "post_quant_conv"):
        return key
    if parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] in fixed:
        return f"{coder}.{fixed[parts[1]]}.{'.'.join(parts[2:])}"
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(parts[3]) + 1}.{rest}"
        rest = ".".join(parts[4:])
        for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            rest = rest.replace(new, old)
        return f"{coder}.mid.attn_1.{rest}"
    block = int(parts[2])
    if coder == "decoder":
        block = up_blocks - 1 - block
    name = "down" if coder == "encoder" else "up"
    if parts[3] in ("downsamplers", "upsamplers"):
        return f"{coder}.{name}.{block}.{'downsample' if coder == 'encoder' else 'upsample'}.conv.{parts[-1]}"
    rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
    return f"{coder}.{name}.{block}.block.{parts[4]}.{rest}"


def build_sd_single_file(pipeline_dir: Path, out: Path) -> None:
    """Write a diffusers SD 1.x directory as one original-layout checkpoint (what civitai-style files are)."""
    from safetensors.torch import load_file, save_file

    pipeline_dir = Path(pipeline_dir)
    unet_config = json.loads((pipeline_dir / "unet" / "config.json").read_text())
    vae_config = json.loads((pipeline_dir / "vae" / "config.json").read_text())
    layers = unet_config["layers_per_block"]
    up_has_attention = {i: "CrossAttn" in t for i, t in enumerate(unet_config["up_block_types"])}
    tensors = {}
    for key, value in load_file(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").items():
        tensors["model.diffusion_model." + _unet_to_ldm(key, layers, up_has_attention)] = value
    for key, value in load_file(pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors").items():
        tensors["first_stage_model." + _vae_to_ldm(key, len(vae_config["up_block_types"]))] = value
    for key, value in load_file(pipeline_dir / "text_encoder" / "model.safetensors").items():
        # Original checkpoints hold the CLIP text model under its transformers name, "text_model.*".
        name = key if key.startswith("text_model.") else "text_model." + key
        tensors["cond_stage_model.transformer." + name] = value
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, staging)
    staging.rename(out)
