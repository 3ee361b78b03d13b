"""Whisper speech-to-text on faster-whisper (CTranslate2) inside a worker process.

Why faster-whisper: CTranslate2 runs Whisper about 4x faster than transformers' implementation at
the same accuracy, with less memory (fused kernels, int8/float16 weights without a torch runtime),
and it brings language detection, the translate task, the temperature fallback ladder and word
timestamps (cross-attention DTW) with it. The model directory is CTranslate2's converted format.

Audio arrives already decoded (16 kHz mono float32, in a file the server wrote); no decoder runs here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from backends import bundle
from backends.contract import Cancel, Chunks, InvalidInput, Segment, TranscriptionParams, TranscriptionResult
from backends.speech import clip
from backends.whisper.plan import WhisperPlan

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class WhisperAdapter:
    def __init__(self, plan: WhisperPlan):
        import ctranslate2
        from faster_whisper import WhisperModel

        self.plan = plan
        if plan.device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            raise RuntimeError("device: cuda was planned but CTranslate2 sees no CUDA device")
        if not (plan.path / "tokenizer.json").is_file():  # faster-whisper would otherwise fetch one from the hub
            raise RuntimeError(f"{plan.path}: tokenizer.json is missing (convert with --copy_files tokenizer.json)")
        self.model = WhisperModel(str(plan.path), device=plan.device, compute_type=plan.compute_type,
                                  cpu_threads=plan.cpu_threads, local_files_only=True)
        self._lock = threading.Lock()  # one decoding loop at a time keeps memory at one model's worth
        self._seconds = 0.0
        self._requests = 0
        self._segments = 0

    def memory_mb(self) -> float:
        return self.plan.estimate().model_mb

    def stats(self) -> dict[str, Any]:
        return {"audio_seconds": round(self._seconds, 3), "transcriptions": self._requests,
                "segments": self._segments}

    def park(self, dest: Path) -> int:
        """Copy the CTranslate2 directory: CTranslate2 can only load what is on a file system and
        cannot save its converted weights, so the stored form is what waits in RAM."""
        return bundle.copy_files(self.plan.path, dest)

    def close(self) -> None:
        self.model = None

    def transcribe(self, params: TranscriptionParams, cancel: Cancel) -> Chunks:
        audio = np.fromfile(params.audio_path, dtype="<f4")
        language = params.language
        if language and not self.model.model.is_multilingual and language != "en":
            raise InvalidInput(f"this model is English-only; language {language!r} is not supported",
                               param="language")
        if params.task == "translate" and not self.model.model.is_multilingual:
            raise InvalidInput("this model is English-only and cannot translate", param="model")
        if language and language not in self.model.supported_languages:
            raise InvalidInput(f"language {language!r} is not a language this model knows", param="language")
        temperature = FALLBACK_TEMPERATURES if not params.temperature else params.temperature
        with self._lock:
            segments, info = self.model.transcribe(
                audio, language=language, task=params.task, beam_size=self.plan.beam_size,
                temperature=temperature, initial_prompt=params.prompt or None,
                word_timestamps=params.word_timestamps, max_new_tokens=self.plan.max_new_tokens, vad_filter=False)
            out: list[Segment] = []
            for segment in segments:  # a lazy generator: each window is decoded as we iterate
                if cancel:
                    break
                out.append(_segment(len(out), segment, params.word_timestamps, info.duration))
            self._segments += len(out)
        self._requests += 1
        self._seconds += info.duration
        words = [w for s in out for w in s.pop("words", [])] if params.word_timestamps else None
        result: TranscriptionResult = {
            "text": "".join(s["text"] for s in out).strip(),
            "language": info.language,
            "language_probability": info.language_probability,
            "duration": info.duration,
            "segments": out,
            "words": words,
            "finish_reason": "cancelled" if cancel else "stop",
        }
        return result
        yield  # a generator like every capability method; transcription has no partial chunks


def _segment(index: int, segment, with_words: bool, duration: float) -> Segment:
    item: Segment = {
        "id": index,
        "seek": int(segment.seek),
        "start": clip(segment.start, duration),
        "end": clip(segment.end, duration),
        "text": segment.text,
        "tokens": [int(t) for t in segment.tokens],
        "temperature": float(segment.temperature or 0.0),
        "avg_logprob": float(segment.avg_logprob),
        "compression_ratio": float(segment.compression_ratio),
        "no_speech_prob": float(segment.no_speech_prob),
    }
    if with_words:
        item["words"] = [{"word": w.word, "start": clip(w.start, duration), "end": clip(w.end, duration),
                          "probability": float(w.probability)} for w in (segment.words or [])]
    return item
