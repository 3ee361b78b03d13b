"""VITS / MMS-TTS text-to-speech inside a worker process: one sentence at a time, so the first audio
reaches the client while the rest is still being synthesised, and a client that leaves stops it."""

from __future__ import annotations

import threading
from typing import Any

from backends import checkpoint
from backends.contract import Cancel, Chunks, InvalidInput, SpeechParams, SpeechResult
from backends.speech import audio_chunk, sentences
from backends.vits.plan import VitsPlan


class VitsAdapter:
    def __init__(self, plan: VitsPlan):
        import torch
        from transformers import AutoTokenizer, VitsModel

        self._torch = torch
        self.plan = plan
        self.model, self.tokenizer = checkpoint.load_with_processor(VitsModel, AutoTokenizer, plan)
        self.sample_rate = int(self.model.config.sampling_rate)
        self.speakers = int(self.model.config.num_speakers or 1)
        self._lock = threading.Lock()  # speaking_rate is a model attribute: one request at a time
        self._seconds = 0.0
        self._sentences = 0

    def memory_mb(self) -> float:
        return checkpoint.weights_mb(self.model) + self.plan.estimate().buffers_mb

    def stats(self) -> dict[str, Any]:
        return {"seconds_synthesised": round(self._seconds, 6), "sentences": self._sentences}

    def close(self) -> None:
        self.model = None

    def synthesize(self, params: SpeechParams, cancel: Cancel) -> Chunks:
        if not 0 <= params.speaker < self.speakers:
            raise InvalidInput(f"speaker {params.speaker} is not one of this model's {self.speakers}", param="voice")
        produced = read = 0
        with self._lock:
            self.model.speaking_rate = params.speed  # VITS scales its predicted durations natively
            for text in sentences(params.text):
                if cancel:
                    break
                ids = self.tokenizer(text, return_tensors="pt").to(self.plan.device)
                read += ids["input_ids"].shape[1]
                if ids["input_ids"].shape[1] == 0:
                    continue  # nothing this vocabulary can say (e.g. only symbols it lacks)
                speaker = {"speaker_id": params.speaker} if self.speakers > 1 else {}
                with self._torch.inference_mode():
                    wave = self.model(**ids, **speaker).waveform[0].float().cpu().numpy()
                produced += wave.size
                self._sentences += 1
                yield audio_chunk(wave, self.sample_rate, speed_applied=True)
        seconds = produced / self.sample_rate
        self._seconds += seconds
        result: SpeechResult = {"seconds": seconds, "input_tokens": read,
                                "finish_reason": "cancelled" if cancel else "stop"}
        return result
