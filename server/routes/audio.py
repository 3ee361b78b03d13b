"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal, cast

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, PlainTextResponse, Response

from backends.capability import Capability
from backends.contract import TranscriptionParams, TranscriptionResult
from backends.whisper.spec import WhisperSpec
from server.audio import SAMPLE_RATE, AudioError, decode
from server.errors import InvalidRequest
from server.generation import Generation, model_for, until_disconnected
from server.protocol import audio as wire
from server.services import services_of

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
    spec = cast(WhisperSpec, model_for(request, body.model, Capability.TRANSCRIPTION))
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
