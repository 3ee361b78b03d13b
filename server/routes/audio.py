"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart), and /v1/audio/speech."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal, cast

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from backends.capability import Capability
from backends.contract import SpeechChunk, SpeechParams, SpeechResult, TranscriptionParams, TranscriptionResult
from backends.seamless.spec import SeamlessSpec
from backends.speech import samples_of
from backends.vits.spec import VitsSpec
from backends.wav2vec2.spec import Wav2Vec2Spec
from backends.whisper.spec import WhisperSpec
from server.audio import SAMPLE_RATE, AudioError, decode
from server.audio_encoder import AudioEncoder, media_type
from server.errors import InvalidRequest
from server.generation import Generation, model_for, sse, until_disconnected, watched
from server.protocol import audio as wire
from server.services import services_of

Transcriber = WhisperSpec | Wav2Vec2Spec | SeamlessSpec  # each bounds its audio (options.max_audio_seconds)
Speaker = VitsSpec | SeamlessSpec  # each names its voices and bounds its input

router = APIRouter()


async def read_form(request: Request):
    """The multipart form, with one file and a bounded number of fields (each field under 1 MB)."""
    form = await request.form(max_files=1, max_fields=wire.MAX_FIELDS)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("file: a multipart file field named 'file' is required", param="file")
    fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    grains = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    fields["timestamp_granularities"] = [g for g in grains if isinstance(g, str)]
    try:
        body = wire.TranscriptionForm.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first.get("loc") else None
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from None
    return body, upload


async def _serve(request: Request, task: Literal["transcribe", "translate"]):
    body, upload = await read_form(request)
    spec = cast(Transcriber, model_for(request, body.model, Capability.TRANSCRIPTION))
    started = time.perf_counter()
    try:
        audio = await asyncio.to_thread(decode, upload.file, spec.options.max_audio_seconds)
    except AudioError as exc:
        raise InvalidRequest(str(exc), param="file") from None
    finally:
        await upload.close()
    svc = services_of(request)
    path = svc.audio_scratch.new_file(".f32")
    await asyncio.to_thread(audio.tofile, path)
    words = "word" in body.timestamp_granularities
    params = TranscriptionParams(audio_path=str(path), task=task,
                                 language=body.language if task == "transcribe" else None, prompt=body.prompt,
                                 temperature=body.temperature,
                                 word_timestamps=words and body.response_format == "verbose_json")
    try:
        generation = await Generation.open(request, spec, None, [params])
        try:
            [(_, result)] = await until_disconnected(request, generation.collect())
        finally:
            generation.close()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    seconds = audio.size / SAMPLE_RATE
    svc.metrics.observe_transcription(spec.id, seconds, time.perf_counter() - started)
    return render(body, task, cast(TranscriptionResult, result), seconds)


def render(body: wire.TranscriptionForm, task: str, result: TranscriptionResult, seconds: float) -> Response:
    result = {**result, "duration": round(seconds, 3)}
    fmt = body.response_format
    if fmt == "text":
        return PlainTextResponse(result["text"] + "\n")
    if fmt == "srt":
        return PlainTextResponse(wire.srt(result["segments"]))
    if fmt == "vtt":
        return PlainTextResponse(wire.vtt(result["segments"]), media_type="text/vtt")
    if fmt == "verbose_json":
        grains = set(body.timestamp_granularities)
        return JSONResponse(wire.verbose(task, result, "word" in grains, "segment" in grains))
    return JSONResponse({"text": result["text"], "usage": wire.usage(seconds)})


@router.post("/v1/audio/transcriptions")
async def create_transcription(request: Request):
    return await _serve(request, "transcribe")


@router.post("/v1/audio/translations")
async def create_translation(request: Request):
    return await _serve(request, "translate")


@router.post("/v1/audio/speech")
async def create_speech(request: Request, body: wire.SpeechRequest):
    spec = cast(Speaker, model_for(request, body.model, Capability.SPEECH))
    if len(body.input) > spec.options.max_input_chars:
        raise InvalidRequest(f"input is longer than this model's {spec.options.max_input_chars} characters",
                             param="input")
    voices = spec.voices()
    speaker = voices.get(body.voice_name())
    if speaker is None:
        raise InvalidRequest(f"voice {body.voice_name()!r} is not one of this model's: {', '.join(sorted(voices))}",
                             param="voice")
    params = SpeechParams(text=body.input, speaker=speaker, speed=body.speed)
    generation = await Generation.open(request, spec, None, [params])
    started = time.perf_counter()
    encoder = AudioEncoder(body.response_format)

    async def audio() -> AsyncIterator[bytes]:
        async for _, raw in generation.events():
            chunk = cast(SpeechChunk, raw)
            if data := encoder.feed(samples_of(chunk), chunk["sample_rate"],
                                    1.0 if chunk["speed_applied"] else body.speed):
                yield data
        if not generation.abandoned:
            yield encoder.finish()

    async def stream() -> AsyncIterator[bytes]:
        try:
            if body.stream_format == "audio":
                async for data in watched(request, generation, audio()):
                    yield data
                return
            async for data in watched(request, generation, audio()):
                yield sse(wire.speech_delta(base64.b64encode(data).decode("ascii")))
            if not generation.abandoned:
                yield sse(wire.speech_done(cast(SpeechResult, generation.finals()[0])["input_tokens"]))
        finally:
            services_of(request).metrics.observe_speech(spec.id, encoder.seconds_in, time.perf_counter() - started)

    kind = "text/event-stream" if body.stream_format == "sse" else media_type(body.response_format)
    return StreamingResponse(stream(), media_type=kind, headers={"Cache-Control": "no-cache"})
