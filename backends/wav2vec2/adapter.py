"""Wav2Vec 2.0 CTC speech-to-text inside a worker process: greedy CTC decoding window by window,
with word times read off the CTC frames. Transcription only: a CTC model has one language and
cannot translate."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from backends import checkpoint
from backends.contract import Cancel, Chunks, InvalidInput, Segment, TranscriptionParams, Word
from backends.speech import SAMPLE_RATE, clip, read_audio, segment, segments_of, transcription
from backends.wav2vec2.plan import Wav2Vec2Plan


class Wav2Vec2Adapter:
    def __init__(self, plan: Wav2Vec2Plan):
        import torch
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

        self._torch = torch
        self.plan = plan
        self.model, self.processor = checkpoint.load_with_processor(Wav2Vec2ForCTC, Wav2Vec2Processor, plan)
        self.seconds_per_frame = self.model.config.inputs_to_logits_ratio / SAMPLE_RATE
        self._lock = threading.Lock()
        self._seconds = 0.0

    def memory_mb(self) -> float:
        return checkpoint.weights_mb(self.model) + self.plan.estimate().activations_mb

    def stats(self) -> dict[str, Any]:
        return {"audio_seconds": round(self._seconds, 3)}

    def close(self) -> None:
        self.model = None

    def transcribe(self, params: TranscriptionParams, cancel: Cancel) -> Chunks:
        if params.task == "translate":
            raise InvalidInput("this model transcribes its own language only and cannot translate", param="model")
        if params.language and params.language != self.plan.language:
            raise InvalidInput(f"this model knows only {self.plan.language!r}", param="language")
        audio = read_audio(params.audio_path)
        duration = audio.size / SAMPLE_RATE

        def read(index: int, start: float, end: float, samples: np.ndarray) -> Segment:
            text, words, logprob = self._window(samples, start, duration)
            return segment(index, start, end, text, logprob, words if params.word_timestamps else None)

        with self._lock:
            segments = segments_of(audio, self.plan.window_seconds, cancel, read)
        self._seconds += duration
        return transcription(segments, self.plan.language, duration, params.word_timestamps, bool(cancel))
        yield  # a generator like every capability method; transcription has no partial chunks

    def _window(self, samples: np.ndarray, offset: float, duration: float) -> tuple[str, list[Word], float]:
        torch = self._torch
        inputs = self.processor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        inputs = {k: v.to(self.plan.device) for k, v in inputs.items()}
        if "input_values" in inputs:
            inputs["input_values"] = inputs["input_values"].to(self.model.dtype)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        best = logprobs.max(dim=-1)
        decoded = self.processor.tokenizer.decode(best.indices.cpu().tolist(), output_word_offsets=True,
                                                  skip_special_tokens=True)
        scores = best.values.cpu().numpy()
        words: list[Word] = []
        for w in decoded.word_offsets:
            first, last = int(w["start_offset"]), max(int(w["end_offset"]), int(w["start_offset"]) + 1)
            words.append({"word": w["word"], "start": clip(offset + first * self.seconds_per_frame, duration),
                          "end": clip(offset + last * self.seconds_per_frame, duration),
                          "probability": float(np.exp(scores[first:last].mean()))})  # its frames' mean
        return decoded.text, words, float(best.values.mean())
