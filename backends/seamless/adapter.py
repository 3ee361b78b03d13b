"""SeamlessM4T v2 inside a worker process: one resident model serves transcription (speech to text in
the same language), translation (speech to English text) and text to speech.

SeamlessM4T does not detect the spoken language: a transcription request names it (`language`,
ISO-639-1) or the model's `default_language` is used. It has no speaking rate of its own, so speech
is returned at its natural pace and the server time-stretches it when `speed` asks."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from backends import checkpoint
from backends.contract import Cancel, Chunks, InvalidInput, SpeechParams, SpeechResult, TranscriptionParams
from backends.seamless.plan import LANGUAGES, SeamlessPlan
from backends.speech import SAMPLE_RATE, audio_chunk, read_audio, segment, segments_of, sentences, transcription

ISO_639_1 = {three: two for two, three in LANGUAGES.items()}  # answers name languages as clients do


class SeamlessAdapter:
    def __init__(self, plan: SeamlessPlan):
        import torch
        from transformers import AutoProcessor, SeamlessM4Tv2Model

        self._torch = torch
        self.plan = plan
        self.model, self.processor = checkpoint.load_with_processor(SeamlessM4Tv2Model, AutoProcessor, plan)
        generation = self.model.generation_config
        self.text_languages = set(getattr(generation, "text_decoder_lang_to_code_id", None) or {})
        self.speech_languages = set(getattr(generation, "vocoder_lang_code_to_id", None) or {})
        self.speakers = int(self.model.config.vocoder_num_spkrs)
        self.sample_rate = int(self.model.config.sampling_rate)
        self._lock = threading.Lock()
        self._counters = {"audio_seconds": 0.0, "seconds_synthesised": 0.0, "sentences": 0}

    def memory_mb(self) -> float:
        return checkpoint.weights_mb(self.model) + self.plan.estimate().activations_mb

    def stats(self) -> dict[str, Any]:
        return {name: round(value, 6) for name, value in self._counters.items()}

    def close(self) -> None:
        self.model = None

    def _language(self, code: str | None, known: set[str]) -> str:
        language = LANGUAGES.get(code, code) if code else self.plan.default_language
        if language not in known:
            raise InvalidInput(f"language {code or language!r} is not one this model speaks", param="language")
        return language

    def transcribe(self, params: TranscriptionParams, cancel: Cancel) -> Chunks:
        if params.word_timestamps:  # SeamlessM4T has no alignment to read word times from
            raise InvalidInput("this model gives no word timestamps; ask for segment timestamps only",
                               param="timestamp_granularities")
        target = "eng" if params.task == "translate" else params.language
        language = self._language(target, self.text_languages)
        audio = read_audio(params.audio_path)
        duration = audio.size / SAMPLE_RATE
        with self._lock:
            segments = segments_of(audio, self.plan.window_seconds, cancel,
                                   lambda i, start, end, samples: segment(i, start, end, self._text(samples, language)))
        self._counters["audio_seconds"] += duration
        return transcription(segments, ISO_639_1.get(language, language), duration, False, bool(cancel))
        yield  # a generator like every capability method; transcription has no partial chunks

    def _text(self, samples: np.ndarray, language: str) -> str:
        inputs = self.processor(audio=samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        inputs = {k: v.to(self.plan.device) for k, v in inputs.items()}
        inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, tgt_lang=language, generate_speech=False,
                                      max_new_tokens=self.plan.max_new_tokens)
        sequences = out.sequences if hasattr(out, "sequences") else out[0]
        return self.processor.batch_decode(sequences, skip_special_tokens=True)[0].strip()

    def synthesize(self, params: SpeechParams, cancel: Cancel) -> Chunks:
        language = self._language(params.language, self.speech_languages & self.text_languages)
        if not 0 <= params.speaker < self.speakers:
            raise InvalidInput(f"speaker {params.speaker} is not one of this model's {self.speakers}", param="voice")
        produced = read = 0
        with self._lock:
            for text in sentences(params.text):
                if cancel:
                    break
                inputs = self.processor(text=text, src_lang=language, return_tensors="pt").to(self.plan.device)
                read += int(inputs["input_ids"].shape[1])
                with self._torch.inference_mode():
                    out = self.model.generate(**inputs, tgt_lang=language, speaker_id=params.speaker,
                                              max_new_tokens=self.plan.max_new_tokens)
                wave = (out[0] if isinstance(out, tuple) else out.waveform)[0].float().cpu().numpy()
                produced += wave.size
                self._counters["sentences"] += 1
                yield audio_chunk(wave, self.sample_rate, speed_applied=False)
        seconds = produced / self.sample_rate
        self._counters["seconds_synthesised"] += seconds
        result: SpeechResult = {"seconds": seconds, "input_tokens": read,
                                "finish_reason": "cancelled" if cancel else "stop"}
        return result
