"""Speech-to-text through the real app, a real faster-whisper worker and the openai client."""

from __future__ import annotations

import io
import re

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile
from conftest import serve

from server.protocol.audio import WHISPER_LANGUAGES
from tinymodels import DEFAULT_ROOT, media

RATE = 16000
UPLOAD_CAP = 4 * 1024 * 1024
SEGMENT_FIELDS = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob"}


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    """A tone over noise: speech-free, but enough for a random model to emit segments."""
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.05
    return (0.3 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def soundfile_bytes(samples: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, RATE, format=fmt)
    return buffer.getvalue()


def pyav_bytes(samples: np.ndarray, container: str, codec: str, rate: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = RATE
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for piece in resampler.resample(frame):
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


ENCODINGS = {
    "wav": lambda x: soundfile_bytes(x, "WAV"),
    "flac": lambda x: soundfile_bytes(x, "FLAC"),
    "mp3": lambda x: pyav_bytes(x, "mp3", "libmp3lame", RATE),
    "ogg": lambda x: pyav_bytes(x, "ogg", "libopus", 48000),
    "webm": lambda x: pyav_bytes(x, "webm", "libopus", 48000),
    "m4a": lambda x: pyav_bytes(x, "ipod", "aac", RATE),
}


def whisper_spec(root, model_id="whisper", **options) -> dict:
    base = {"compute_type": "int8", "beam_size": 1, "device": "cpu", "cpu_threads": 1, "max_audio_seconds": 60,
            "max_new_tokens": 24}
    return {"id": model_id, "backend": "faster-whisper", "path": str(root / "tiny-whisper"),
            "options": {**base, **options}}


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    media.build(DEFAULT_ROOT)
    models = [whisper_spec(DEFAULT_ROOT), whisper_spec(DEFAULT_ROOT, "cold")]
    with serve(tmp_path_factory.mktemp("audio"), models, max_upload_bytes=UPLOAD_CAP) as served:
        yield served


@pytest.fixture(scope="module")
def wav():
    return ENCODINGS["wav"](signal(3.0))


def transcribe(s, data: bytes, name: str = "clip.wav", **kwargs):
    return s.client().audio.transcriptions.create(model="whisper", file=(name, data), **kwargs)


def test_json_gives_text_and_duration_usage(s, wav):
    result = transcribe(s, wav)
    assert isinstance(result.text, str)
    assert result.usage.type == "duration"
    assert result.usage.seconds == pytest.approx(3.0, abs=0.01)


def test_text_format_is_plain_text(s, wav):
    result = transcribe(s, wav, response_format="text")
    assert isinstance(result, str)
    assert not result.lstrip().startswith("{")


SRT_BLOCK = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.*)$", re.S)
VTT_CUE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(.*)$", re.S)


def seconds_of(stamp: str) -> float:
    hours, minutes, rest = stamp.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def test_srt_is_numbered_blocks_with_ordered_times(s, wav):
    text = transcribe(s, wav, response_format="srt")
    blocks = [b for b in text.strip().split("\n\n") if b]
    assert blocks, "the tiny model emits at least one segment for this input"
    for number, block in enumerate(blocks, start=1):
        match = SRT_BLOCK.match(block)
        assert match, block
        assert int(match.group(1)) == number
        assert 0 <= seconds_of(match.group(2)) <= seconds_of(match.group(3)) <= 3.01


def test_vtt_has_a_header_and_valid_cues(s, wav):
    text = transcribe(s, wav, response_format="vtt")
    header, _, body = text.partition("\n\n")
    assert header == "WEBVTT"
    cues = [c for c in body.strip().split("\n\n") if c]
    assert cues
    for cue in cues:
        match = VTT_CUE.match(cue)
        assert match, cue
        assert seconds_of(match.group(1)) <= seconds_of(match.group(2)) <= 3.01


def test_verbose_json_has_every_segment_field_and_the_input_duration(s, wav):
    result = transcribe(s, wav, response_format="verbose_json")
    body = result.model_dump()
    assert body["task"] == "transcribe"
    assert body["language"] in WHISPER_LANGUAGES  # detected: no language was given
    assert body["duration"] == pytest.approx(3.0, abs=0.01)
    assert body["usage"] == {"type": "duration", "seconds": pytest.approx(3.0, abs=0.01)}
    assert body["segments"]
    for index, segment in enumerate(body["segments"]):
        assert set(segment) >= SEGMENT_FIELDS, segment
        assert segment["id"] == index
        assert 0 <= segment["start"] <= segment["end"] <= 3.01
        assert all(isinstance(t, int) for t in segment["tokens"])
    assert body["text"] == "".join(seg["text"] for seg in body["segments"]).strip()


def test_a_given_language_is_used(s, wav):
    result = transcribe(s, wav, response_format="verbose_json", language="de")
    assert result.language == "de"


def test_word_timestamps_with_either_spelling(s, wav):
    client_way = transcribe(s, wav, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert client_way.words and client_way.segments
    for word in client_way.words:
        assert 0 <= word.start <= word.end <= 3.01
    plain = s.http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                        data={"model": "whisper", "response_format": "verbose_json",
                              "timestamp_granularities": "word"})
    assert plain.status_code == 200, plain.text
    assert plain.json()["words"] and "segments" not in plain.json()


def test_translation_returns_a_translate_task(s, wav):
    result = s.client().audio.translations.create(model="whisper", file=("clip.wav", wav),
                                                  response_format="verbose_json")
    assert result.model_dump()["task"] == "translate"
    assert result.duration == pytest.approx(3.0, abs=0.01)
    assert isinstance(s.client().audio.translations.create(model="whisper", file=("c.wav", wav)).text, str)


def test_prompt_and_temperature_are_accepted(s, wav):
    result = transcribe(s, wav, prompt="Glossary: modelyard", temperature=0.4, response_format="verbose_json")
    assert all(seg.temperature == pytest.approx(0.4) for seg in result.segments)


@pytest.mark.parametrize("fmt", sorted(ENCODINGS))
def test_every_container_decodes(s, fmt):
    data = ENCODINGS[fmt](signal(2.0, seed=1))
    result = transcribe(s, data, name=f"clip.{fmt}", response_format="verbose_json")
    assert result.duration == pytest.approx(2.0, abs=0.15)  # AAC and Opus pad a frame or two


def bad(s, files, data, status=400):
    response = s.http.post("/v1/audio/transcriptions", files=files, data={"model": "cold", **data})
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize(("payload", "name"), [
    (b"this is not audio at all" * 50, "notes.txt"),
    (b"", "empty.wav"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(40), "truncated.wav"),
    (b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "list.m3u8"),
])
def test_corrupt_or_non_audio_files_are_a_400(s, payload, name):
    assert bad(s, {"file": (name, payload)}, {})["param"] == "file"


def test_audio_over_the_duration_cap_is_a_400(s):
    long = soundfile_bytes(signal(61.0), "FLAC")  # FLAC keeps 61 s under the upload cap
    assert len(long) < UPLOAD_CAP
    error = bad(s, {"file": ("long.flac", long)}, {})
    assert error["param"] == "file" and "60" in error["message"]


@pytest.mark.parametrize(("data", "param"), [
    ({"response_format": "docx"}, "response_format"),
    ({"temperature": "nan"}, "temperature"),
    ({"temperature": "3"}, "temperature"),
    ({"language": "klingon"}, "language"),
    ({"timestamp_granularities[]": "phoneme"}, "timestamp_granularities"),
])
def test_bad_fields_are_a_400_with_param(s, wav, data, param):
    loads = s.arbiter.loads
    assert bad(s, {"file": ("a.wav", wav)}, data)["param"] == param
    assert s.arbiter.loads == loads


def test_a_missing_file_is_a_400(s):
    assert bad(s, None, {"response_format": "json"})["param"] == "file"


def test_more_than_one_file_is_a_400(s, wav):
    response = s.http.post("/v1/audio/transcriptions", data={"model": "cold"},
                           files=[("file", ("a.wav", wav)), ("file", ("b.wav", wav))])
    assert response.status_code == 400


def test_too_many_form_fields_is_a_400(s, wav):
    fields = {f"x{i}": "1" for i in range(40)}
    response = s.http.post("/v1/audio/transcriptions", data={"model": "cold", **fields}, files={"file": ("a.wav", wav)})
    assert response.status_code == 400


def test_an_upload_over_the_cap_is_a_413(s):
    big = bytes(UPLOAD_CAP + 1024)
    with pytest.raises(openai.APIStatusError) as caught:
        transcribe(s, big)
    assert caught.value.status_code == 413


def test_an_upload_over_the_cap_without_content_length_is_a_413(s):
    boundary = "modelyardboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ncold\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n").encode()

    def chunks():  # chunked transfer: the server must count the bytes as they come
        yield head
        for _ in range(UPLOAD_CAP // 65536 + 2):
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(s.base_url + "/v1/audio/transcriptions", content=chunks(),
                          headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413, response.text


def test_transcription_metrics_are_counted(s):
    text = s.http.get("/metrics").text
    match = re.search(r'modelyard_audio_seconds_transcribed_total\{model="whisper"\} ([0-9.e+]+)', text)
    assert match and float(match.group(1)) > 0
