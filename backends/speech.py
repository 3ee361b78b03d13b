"""What the speech engines share: sentences to synthesise one at a time, OpenAI's voice names,
audio samples across the pipe, and the segment and word shapes of a transcription."""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable, Iterator

import numpy as np

from backends.contract import Segment, SpeechChunk, TranscriptionResult, Word

SAMPLE_RATE = 16000  # what the server decodes uploads to (server/audio.py)
# The voices OpenAI's speech endpoint names; a model maps each to one of its own speakers.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")
_SENTENCE_END = re.compile("(?<=[.!?;:\u2026\u3002\uff01\uff1f])\\s+|\n+")  # ellipsis, CJK full stops


def default_voices(speakers: int) -> dict[str, int]:
    """OpenAI's voice names spread over a model's speakers (all one speaker for a single-voice model)."""
    return {name: i % max(speakers, 1) for i, name in enumerate(OPENAI_VOICES)}


def sentences(text: str, longest: int = 400) -> list[str]:
    """The text in pieces to synthesise one at a time, so audio starts before the whole text is done.
    A run with no sentence end is cut at spaces near `longest` characters."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        while len(sentence) > longest:
            cut = sentence.rfind(" ", 0, longest)
            cut = cut if cut > 0 else longest
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return pieces


def audio_chunk(samples: np.ndarray, sample_rate: int, speed_applied: bool) -> SpeechChunk:
    """Mono float32 samples as one chunk for the pipe."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    return {"audio": base64.b64encode(data).decode("ascii"), "sample_rate": sample_rate,
            "speed_applied": speed_applied}


def samples_of(chunk: SpeechChunk) -> np.ndarray:
    return np.frombuffer(base64.b64decode(chunk["audio"]), dtype="<f4")


def read_audio(path: str) -> np.ndarray:
    """The samples the server decoded and wrote for this call (16 kHz mono float32)."""
    return np.fromfile(path, dtype="<f4")


def windows(audio: np.ndarray, seconds: float) -> Iterator[tuple[float, float, np.ndarray]]:
    """(start, end, samples) of consecutive pieces at most `seconds` long: a model reads long audio
    piece by piece, and a cancel is checked between pieces."""
    size = int(seconds * SAMPLE_RATE)
    duration = round(audio.size / SAMPLE_RATE, 3)
    for start in range(0, audio.size, size):
        yield round(start / SAMPLE_RATE, 3), min(round((start + size) / SAMPLE_RATE, 3), duration), \
            audio[start:start + size]


def segments_of(audio: np.ndarray, seconds: float, cancel, read: Callable[..., Segment]) -> list[Segment]:
    """One segment per window, `read(index, start, end, samples)` making each, until cancelled."""
    segments: list[Segment] = []
    for start, end, samples in windows(audio, seconds):
        if cancel:
            break
        segments.append(read(len(segments), start, end, samples))
    return segments


def clip(seconds: float, duration: float) -> float:
    """A timestamp inside the audio (models may point past its end, into padding)."""
    return round(min(max(float(seconds), 0.0), duration), 3)


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: text bytes over their zlib-compressed size."""
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def segment(index: int, start: float, end: float, text: str, avg_logprob: float = 0.0,
            words: list[Word] | None = None) -> Segment:
    """A segment for an engine without Whisper's decoder statistics (no tokens, no-speech probability 0)."""
    item: Segment = {"id": index, "seek": 0, "start": start, "end": end, "text": text, "tokens": [],
                     "temperature": 0.0, "avg_logprob": avg_logprob, "compression_ratio": compression_ratio(text),
                     "no_speech_prob": 0.0}
    if words is not None:
        item["words"] = words
    return item


def transcription(segments: list[Segment], language: str, duration: float, with_words: bool,
                  cancelled: bool) -> TranscriptionResult:
    words = [w for s in segments for w in s.pop("words", [])] if with_words else None
    return {"text": " ".join(s["text"].strip() for s in segments if s["text"].strip()), "language": language,
            "language_probability": 1.0, "duration": duration, "segments": segments, "words": words,
            "finish_reason": "cancelled" if cancelled else "stop"}
