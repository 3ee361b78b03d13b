"""/v1/audio/transcriptions and /translations (form fields, response formats) and /v1/audio/speech."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from server.protocol.common import WireModel

WHISPER_LANGUAGES = frozenset(["en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue"])
MAX_FIELDS = 16  # model, language, prompt, response_format, temperature, granularities... and a margin
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class TranscriptionForm(WireModel):
    model: str = Field(min_length=1, max_length=256)
    language: str | None = Field(None, max_length=8)
    prompt: str | None = Field(None, max_length=2000)
    response_format: ResponseFormat = "json"
    temperature: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list, max_length=2)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        code = value.strip().lower()
        if code not in WHISPER_LANGUAGES:
            raise ValueError(f"{value!r} is not an ISO-639-1 language code Whisper knows")
        return code


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: list[dict]) -> str:
    blocks = [f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
              for i, s in enumerate(segments, start=1)]
    return "\n".join(blocks)


def vtt(segments: list[dict]) -> str:
    blocks = [f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text'].strip()}\n"
              for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def usage(seconds: float) -> dict:
    return {"type": "duration", "seconds": round(seconds, 3)}


def verbose(task: str, result: dict, words: bool, segments: bool) -> dict:
    body: dict[str, Any] = {
        "task": task,
        "language": result["language"],
        "duration": result["duration"],
        "text": result["text"],
    }
    if segments or not words:
        body["segments"] = result["segments"]
    if words:
        body["words"] = [{k: w[k] for k in ("word", "start", "end")} for w in result.get("words") or []]
    body["usage"] = usage(result["duration"])
    return body


# ---- POST /v1/audio/speech -----------------------------------------------------------------------

MAX_SPEECH_CHARS = 4096  # OpenAI's limit; a model may set a lower one (options.max_input_chars)


class CustomVoice(WireModel):
    id: str = Field(min_length=1, max_length=64)


class SpeechRequest(WireModel):
    model: str = Field(min_length=1, max_length=256)
    input: str = Field(min_length=1, max_length=MAX_SPEECH_CHARS)
    voice: Annotated[str, Field(min_length=1, max_length=64)] | CustomVoice
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, Field(ge=0.25, le=4.0, allow_inf_nan=False)] = 1.0
    instructions: str | None = Field(None, max_length=4096)  # accepted; no engine here can follow it yet
    stream_format: Literal["audio", "sse"] = "audio"

    @field_validator("input")
    @classmethod
    def _something_to_say(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input has nothing to say")
        return value

    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, CustomVoice) else self.voice


def speech_delta(audio_b64: str) -> dict[str, Any]:
    return {"type": "speech.audio.delta", "audio": audio_b64}


def speech_done(input_tokens: int) -> dict[str, Any]:
    return {"type": "speech.audio.done",
            "usage": {"input_tokens": input_tokens, "output_tokens": 0, "total_tokens": input_tokens}}
