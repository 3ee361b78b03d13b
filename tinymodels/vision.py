"""Tiny random vision-language models in real formats: a LLaVA projector (mmproj GGUF) for the demo
GGUF llama, and Hugging Face LLaVA 1.5, LLaVA-NeXT, BLIP-2 and InstructBLIP directories with their
processors and chat templates.

Random weights: the answers are noise; loading, image preprocessing, image tokens and decoding are
the path a 7B LLaVA takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.hf.vision import BLIP_TEMPLATE  # BLIP-2's own prompt, as the demo processors' template
from tinymodels import build_dir
from tinymodels.gguf import CHAT_FILE, build_file

MMPROJ_FILE = "tiny-llava-mmproj.gguf"
LLAVA_DIR, LLAVA_NEXT_DIR, BLIP2_DIR, INSTRUCTBLIP_DIR = (
    "tiny-llava-hf", "tiny-llava-next-hf", "tiny-blip2", "tiny-instructblip")
IMAGE_SIZE, PATCH = 32, 8  # 16 patches: 16 image tokens per image (per tile for LLaVA-NeXT)
SEED = 4321

# LLaVA 1.5's template as llava-hf ships it (images first in each turn, then its text), shortened.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
def build(root: Path) -> None:
    from tinymodels import gguf

    root.mkdir(parents=True, exist_ok=True)
    gguf.build(root)  # the text model the projector feeds
    build_file(root / MMPROJ_FILE, lambda tmp: write_mmproj(tmp, text_dim=_text_dim(root / CHAT_FILE)))
    build_dir(root / LLAVA_DIR, lambda out: _build_llava(out, next_=False))
    build_dir(root / LLAVA_NEXT_DIR, lambda out: _build_llava(out, next_=True))
    build_dir(root / BLIP2_DIR, lambda out: _build_blip(out, instruct=False))
    build_dir(root / INSTRUCTBLIP_DIR, lambda out: _build_blip(out, instruct=True))


def _text_dim(path: Path) -> int:
    from gguf import GGUFReader

    return int(GGUFReader(path).fields["llama.embedding_length"].contents())


def write_mmproj(path: Path, *, text_dim: int, dim: int = 32, ffn: int = 48, layers: int = 2, heads: int = 2,
                 image: int = IMAGE_SIZE, patch: int = PATCH, seed: int = SEED) -> None:
    """A CLIP vision tower and LLaVA's two-layer MLP projector (llama.cpp's `mlp` type) as llama.cpp's
    mtmd reads them: patches of `patch` pixels, one class embedding, `layers` pre-norm blocks."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    writer.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, "mlp")
    vision = gguf.Keys.ClipVision
    writer.add_uint32(vision.IMAGE_SIZE, image)
    writer.add_uint32(vision.PATCH_SIZE, patch)
    writer.add_uint32(vision.EMBEDDING_LENGTH, dim)
    writer.add_uint32(vision.FEED_FORWARD_LENGTH, ffn)  # not equal to dim: llama.cpp tells them apart by shape
    writer.add_uint32(vision.PROJECTION_DIM, text_dim)
    writer.add_uint32(vision.BLOCK_COUNT, layers)
    writer.add_uint32(vision.Attention.HEAD_COUNT, heads)
    writer.add_float32(vision.Attention.LAYERNORM_EPS, 1e-5)
    writer.add_array(vision.IMAGE_MEAN, [0.5, 0.5, 0.5])
    writer.add_array(vision.IMAGE_STD, [0.5, 0.5, 0.5])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        values = np.ones(shape) if ones else rng.standard_normal(shape) * 0.05
        writer.add_tensor(name, values.astype(np.float32))

    tensor("v.patch_embd.weight", dim, 3, patch, patch)
    tensor("v.class_embd", dim)
    tensor("v.position_embd.weight", (image // patch) ** 2 + 1, dim)
    for i in range(layers):
        for part in ("q", "k", "v", "out"):
            tensor(f"v.blk.{i}.attn_{part}.weight", dim, dim)
            tensor(f"v.blk.{i}.attn_{part}.bias", dim)
        for norm in ("ln1", "ln2"):
            tensor(f"v.blk.{i}.{norm}.weight", dim, ones=True)
            tensor(f"v.blk.{i}.{norm}.bias", dim)
        tensor(f"v.blk.{i}.ffn_up.weight", ffn, dim)
        tensor(f"v.blk.{i}.ffn_up.bias", ffn)
        tensor(f"v.blk.{i}.ffn_down.weight", dim, ffn)
        tensor(f"v.blk.{i}.ffn_down.bias", dim)
    tensor("mm.0.weight", text_dim, dim)
    tensor("mm.0.bias", text_dim)
    tensor("mm.2.weight", text_dim, text_dim)
    tensor("mm.2.bias", text_dim)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _tokenizer(template: str):
    """The demo byte-level BPE with `<image>` as one special token, and the model's chat template."""
    from tokenizers import AddedToken

    from tinymodels.hf import _byte_bpe_tokenizer

    tokenizer = _byte_bpe_tokenizer()
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tokenizer.image_token = "<image>"
    tokenizer.chat_template = template
    return tokenizer


# 64 wide: bitsandbytes quantizes in blocks of 64 inputs, and the 4/8-bit demos quantize these layers too.
WIDTH = 64


def _start(torch, template: str):
    """A seeded build's tokenizer and the id of its image token."""
    torch.manual_seed(SEED)
    tokenizer = _tokenizer(template)
    return tokenizer, tokenizer.convert_tokens_to_ids("<image>")


def _vision_config(kind):
    return kind(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=2,
                image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=WIDTH)


def _build_llava(out: Path, next_: bool) -> None:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    tokenizer, image_token = _start(torch, LLAVA_TEMPLATE)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    shared = dict(vision_config=_vision_config(CLIPVisionConfig), text_config=text, image_token_index=image_token,
                  vision_feature_layer=-2, vision_feature_select_strategy="default")
    size = {"shortest_edge": IMAGE_SIZE}
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if next_:
        pinpoints = [[IMAGE_SIZE, IMAGE_SIZE * 2], [IMAGE_SIZE * 2, IMAGE_SIZE], [IMAGE_SIZE * 2, IMAGE_SIZE * 2]]
        config = LlavaNextConfig(**shared, image_grid_pinpoints=pinpoints, image_seq_length=16)
        model = LlavaNextForConditionalGeneration(config)
        processor = LlavaNextProcessor(LlavaNextImageProcessor(size=size, crop_size=crop,
                                                               image_grid_pinpoints=pinpoints),
                                       tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
                                       num_additional_image_tokens=1, image_token="<image>",
                                       chat_template=LLAVA_TEMPLATE)
    else:
        config = LlavaConfig(**shared, image_seq_length=16)
        model = LlavaForConditionalGeneration(config)
        processor = LlavaProcessor(CLIPImageProcessor(size=size, crop_size=crop), tokenizer, patch_size=PATCH,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   image_token="<image>", chat_template=LLAVA_TEMPLATE)
    _widen(model, torch)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _build_blip(out: Path, instruct: bool) -> None:
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        OPTConfig,
    )

    tokenizer, image_token = _start(torch, BLIP_TEMPLATE)
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, ffn_dim=2 * WIDTH, num_hidden_layers=2,
                     num_attention_heads=2, word_embed_proj_dim=WIDTH, max_position_embeddings=2048,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    qformer = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * WIDTH,
                   cross_attention_frequency=1, encoder_hidden_size=WIDTH)
    images = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    if instruct:
        from tinymodels.hf import _wordpiece_tokenizer  # the Q-Former reads the question too

        qformer_tokenizer = _wordpiece_tokenizer()
        config = InstructBlipConfig(vision_config=_vision_config(InstructBlipVisionConfig).to_dict(),
                                    qformer_config=InstructBlipQFormerConfig(
                                        **qformer, vocab_size=len(qformer_tokenizer)).to_dict(),
                                    text_config=text.to_dict(), num_query_tokens=4, image_token_index=image_token)
        model = InstructBlipForConditionalGeneration(config)
        processor = InstructBlipProcessor(images, tokenizer, qformer_tokenizer, num_query_tokens=4,
                                          chat_template=BLIP_TEMPLATE)
    else:
        config = Blip2Config(vision_config=_vision_config(Blip2VisionConfig).to_dict(),
                             qformer_config=Blip2QFormerConfig(**qformer).to_dict(), text_config=text.to_dict(),
                             num_query_tokens=4, image_token_index=image_token, image_text_hidden_size=WIDTH)
        model = Blip2ForConditionalGeneration(config)
        processor = Blip2Processor(images, tokenizer, num_query_tokens=4, chat_template=BLIP_TEMPLATE)
    _widen(model, torch)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _widen(model, torch) -> None:
    """Random init gives near-flat logits; widen them so sampling and greedy decoding differ visibly."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(5.0)
