"""Tiny speech models in transformers' formats: VITS text-to-speech, a Wav2Vec2 CTC recogniser and a
SeamlessM4T v2 model (speech to text, translation and text to speech in one checkpoint).

Random weights: the audio is noise and the text gibberish, but every load, tokenizer, processor
and generate path is the one the real checkpoints (facebook/mms-tts-eng, facebook/wav2vec2-base-960h,
facebook/seamless-m4t-v2-large) take.
"""

from __future__ import annotations

import json
from pathlib import Path

from tinymodels.media import _atomic

VITS_DIR = "tiny-vits"
WAV2VEC2_DIR = "tiny-wav2vec2"
SEAMLESS_DIR = "tiny-seamless"
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
SEAMLESS_LANGUAGES = ["eng", "fra", "deu", "spa"]


def build(root: Path) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _atomic(root / VITS_DIR, build_vits)
    _atomic(root / WAV2VEC2_DIR, build_wav2vec2)
    _atomic(root / SEAMLESS_DIR, build_seamless)


def build_vits(out: Path) -> None:
    """Two speakers, so voices map to different speaker embeddings."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    out.mkdir(parents=True)
    symbols = ["<pad>", "<unk>", " ", *LETTERS, "'", ".", ",", ";", "?", "!", "-"]
    (out / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    VitsTokenizer(vocab_file=str(out / "vocab.json"), add_blank=True, phonemize=False).save_pretrained(out)
    torch.manual_seed(0)
    config = VitsConfig(
        vocab_size=len(symbols), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, window_size=2,
        ffn_dim=32, flow_size=16, spectrogram_bins=33, upsample_initial_channel=16, upsample_rates=[8, 8, 4],
        upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
        prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1, sampling_rate=16000, num_speakers=2, speaker_embedding_size=8)
    VitsModel(config).save_pretrained(out)


def build_wav2vec2(out: Path) -> None:
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out.mkdir(parents=True)
    symbols = ["<pad>", "<s>", "</s>", "<unk>", "|", *LETTERS, "'"]
    (out / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), word_delimiter_token="|", pad_token="<pad>",
                                     unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                                         return_attention_mask=True, padding_value=0.0)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=len(symbols), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), feat_extract_norm="group",
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0)
    Wav2Vec2ForCTC(config).save_pretrained(out)


def build_seamless(out: Path) -> None:
    """Four languages and four vocoder speakers. The generation config carries the language and
    character tables generate() reads; `_from_model_config = False` keeps them through save/load."""
    import torch
    from transformers import (
        GenerationConfig,
        SeamlessM4TFeatureExtractor,
        SeamlessM4TProcessor,
        SeamlessM4TTokenizer,
        SeamlessM4Tv2Config,
        SeamlessM4Tv2Model,
    )

    out.mkdir(parents=True)
    codes = [f"__{language}__" for language in SEAMLESS_LANGUAGES]
    pieces = ["▁", *LETTERS, *("▁" + c for c in LETTERS), ".", ",", "'", "?", "!"]
    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *codes, *pieces])}
    tokenizer = SeamlessM4TTokenizer(vocab=vocab, merges=[], src_lang="eng", tgt_lang="eng",
                                     additional_special_tokens=codes)
    extractor = SeamlessM4TFeatureExtractor(feature_size=80, num_mel_bins=80, stride=2, padding_value=1.0,
                                            sampling_rate=16000)
    SeamlessM4TProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    chars = ["<pad>", "<unk>", "<s>", "</s>", " ", *LETTERS, ".", ",", "'", "?", "!"]
    config = SeamlessM4Tv2Config(
        vocab_size=len(vocab), t2u_vocab_size=64, char_vocab_size=len(chars), hidden_size=32,
        encoder_layers=1, encoder_ffn_dim=64, encoder_attention_heads=2, decoder_layers=1, decoder_ffn_dim=64,
        decoder_attention_heads=2, speech_encoder_layers=1, speech_encoder_attention_heads=2,
        speech_encoder_intermediate_size=64, feature_projection_input_dim=160, adaptor_kernel_size=8,
        adaptor_stride=8, t2u_encoder_layers=1, t2u_encoder_ffn_dim=64, t2u_encoder_attention_heads=2,
        t2u_decoder_layers=1, t2u_decoder_ffn_dim=64, t2u_decoder_attention_heads=2,
        t2u_variance_predictor_embed_dim=32, t2u_variance_predictor_hidden_dim=32, upsample_initial_channel=16,
        upsample_rates=(8, 8, 5), upsample_kernel_sizes=(16, 16, 10), resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1,),), unit_hifi_gan_vocab_size=60, unit_embed_dim=16, lang_embed_dim=8,
        spkr_embed_dim=8, vocoder_num_langs=len(SEAMLESS_LANGUAGES), vocoder_num_spkrs=4,
        max_position_embeddings=512, t2u_max_position_embeddings=512, pad_token_id=0, bos_token_id=2,
        eos_token_id=3, decoder_start_token_id=3)
    torch.manual_seed(0)
    model = SeamlessM4Tv2Model(config).eval()
    generation = GenerationConfig.from_model_config(config)
    generation.text_decoder_lang_to_code_id = {lang: vocab[f"__{lang}__"] for lang in SEAMLESS_LANGUAGES}
    generation.t2u_lang_code_to_id = {lang: i for i, lang in enumerate(SEAMLESS_LANGUAGES)}
    generation.vocoder_lang_code_to_id = {lang: i for i, lang in enumerate(SEAMLESS_LANGUAGES)}
    generation.id_to_text = {str(i): token for token, i in vocab.items()}
    generation.char_to_id = {c: i for i, c in enumerate(chars)}
    generation._from_model_config = False
    model.generation_config = generation
    model.save_pretrained(out)
