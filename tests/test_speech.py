"""Speech both ways through the real app, real workers and the openai client: text-to-speech (VITS,
SeamlessM4T v2) in every format, streamed and as SSE; Wav2Vec2 and SeamlessM4T recognition."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import av
import numpy as np
import openai
import pytest
import soundfile
from conftest import serve

from tinymodels import DEFAULT_ROOT, speech

RATE = 16000
TEXT = "Hello there. This is a tiny voice. It speaks in sentences!"
FORMATS = {"mp3": 24000, "opus": 48000, "aac": 24000, "flac": 24000, "wav": 24000, "pcm": 24000}
PADDING_S = {"mp3": 0.1, "aac": 0.1, "opus": 0.03, "flac": 0.005, "wav": 0.005, "pcm": 0.005}  # codec framing


def entry(model_id: str, backend: str, directory: str, **options) -> dict:
    return {"id": model_id, "backend": backend, "path": str(DEFAULT_ROOT / directory),
            "options": {"device": "cpu", **options}}


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    speech.build(DEFAULT_ROOT)
    models = [entry("tts", "vits", speech.VITS_DIR, max_input_chars=2000) | {"aliases": ["tts-1"]},
              entry("w2v", "wav2vec2", speech.WAV2VEC2_DIR, max_audio_seconds=60),
              entry("seamless", "seamless-m4t", speech.SEAMLESS_DIR, max_new_tokens=12, max_audio_seconds=60),
              {"id": "chat", "backend": "fake"}]
    with serve(tmp_path_factory.mktemp("speech"), models) as served:
        yield served


def decoded(data: bytes, fmt: str) -> tuple[int, float]:
    """(sample rate, seconds) of an encoded answer, read back with PyAV."""
    if fmt == "pcm":
        return 24000, len(data) / 2 / 24000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.rate, samples / stream.rate


def synthesised(s, model: str) -> float:
    """Seconds of audio the model's worker has made so far, before any time-stretch."""
    return s.resident(model, stats=True)["worker"]["seconds_synthesised"]


def wav_upload(seconds: float = 2.0) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    buffer = io.BytesIO()
    soundfile.write(buffer, samples.astype(np.float32), RATE, format="WAV")
    return buffer.getvalue()


# ---- text to speech ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_speech_in_every_format_decodes_to_the_synthesised_length(s, fmt):
    client = s.client(timeout=120)
    client.audio.speech.create(model="tts-1", voice="alloy", input="Warm up.")  # loads the model
    before = synthesised(s, "tts")
    reply = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    made = synthesised(s, "tts") - before
    rate, seconds = decoded(reply.content, fmt)
    assert rate == FORMATS[fmt]
    assert made > 0.1 and abs(seconds - made) <= PADDING_S[fmt] + 0.01, (seconds, made)


def test_speed_is_native_on_vits_and_time_stretched_by_the_server_on_seamless(s):
    client = s.client(timeout=120)
    for model, stretched in (("tts", False), ("seamless", True)):
        client.audio.speech.create(model=model, voice="echo", input="Warm up.")
        before = synthesised(s, model)
        reply = client.audio.speech.create(model=model, voice="echo", input=TEXT, response_format="wav", speed=2.0)
        made = synthesised(s, model) - before
        _, seconds = decoded(reply.content, "wav")
        expected = made / 2 if stretched else made  # VITS's own rate already shortened what it made
        assert abs(seconds - expected) <= 0.03 + 0.02 * expected, (model, seconds, made)


def test_streamed_speech_arrives_sentence_by_sentence(s):
    client = s.client(timeout=120)
    client.audio.speech.create(model="tts", voice="alloy", input="Warm up.")
    text = " ".join(f"Sentence number {word}." for word in ("one", "two", "three", "four", "five", "six"))
    with client.audio.speech.with_streaming_response.create(model="tts", voice="alloy", input=text,
                                                             response_format="pcm") as response:
        assert response.headers["content-type"] == "audio/pcm"
        pieces = [piece for piece in response.iter_bytes() if piece]
    assert len(pieces) > 1
    assert len(b"".join(pieces)) % 2 == 0  # whole 16-bit samples


def test_sse_stream_carries_audio_deltas_then_done_with_usage(s):
    body = {"model": "tts", "voice": "nova", "input": TEXT, "response_format": "mp3", "stream_format": "sse"}
    with s.http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1]["type"] == "speech.audio.done"
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > len(TEXT) // 2 and usage["total_tokens"] == usage["input_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert decoded(audio, "mp3")[1] > 0.1


def test_a_client_that_leaves_mid_synthesis_stops_the_worker(s):
    client = s.client(timeout=120)
    client.audio.speech.create(model="tts", voice="alloy", input="Warm up.")
    text = " ".join(f"This is sentence {i}." for i in range(90))
    before = s.resident("tts", stats=True)["worker"]["sentences"]
    with client.audio.speech.with_streaming_response.create(model="tts", voice="alloy", input=text,
                                                             response_format="pcm") as response:
        next(response.iter_bytes())
    s.wait_until(lambda: s.resident("tts", stats=True)["worker"]["active"] == 0, timeout=5)
    done = s.resident("tts", stats=True)["worker"]["sentences"] - before
    time.sleep(0.3)
    assert s.resident("tts", stats=True)["worker"]["sentences"] - before == done < 90
    assert s.resident("tts")["refcount"] == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"input": ""}, "input"),
    ({"input": "   \n "}, "input"),
    ({"input": "x" * 4097}, "input"),
    ({"input": "y" * 2001}, "input"),  # over this model's own max_input_chars
    ({"voice": "darth"}, "voice"),
    ({"speed": 0.1}, "speed"),
    ({"speed": 4.5}, "speed"),
    ({"response_format": "ogg"}, "response_format"),
])
def test_bad_speech_requests_are_a_400_naming_the_field(s, body, param):
    request = {"model": "tts", "voice": "alloy", "input": "Hello.", **body}
    response = s.http.post("/v1/audio/speech", json=request)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_an_unknown_voice_lists_the_valid_ones(s):
    response = s.http.post("/v1/audio/speech", json={"model": "tts", "voice": "darth", "input": "Hi."})
    assert "alloy" in response.json()["error"]["message"] and "shimmer" in response.json()["error"]["message"]


def test_synthesised_seconds_are_counted_in_the_metrics(s):
    def counted() -> float:
        text = s.http.get("/metrics").text
        match = re.search(r'modelyard_audio_seconds_synthesised_total\{model="tts"\} ([0-9.e+-]+)', text)
        return float(match.group(1)) if match else 0.0

    s.client().audio.speech.create(model="tts", voice="alloy", input="Warm up.")
    before, made_before = counted(), synthesised(s, "tts")
    s.client().audio.speech.create(model="tts", voice="alloy", input=TEXT, response_format="flac")
    assert counted() - before == pytest.approx(synthesised(s, "tts") - made_before, abs=1e-3)


def test_a_model_that_cannot_speak_is_a_400(s):
    with pytest.raises(openai.BadRequestError) as refused:
        s.client().audio.speech.create(model="w2v", voice="alloy", input="Hello.")
    assert refused.value.code == "unsupported_model_capability"


# ---- speech to text ------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "task"), [("w2v", "transcribe"), ("seamless", "transcribe"),
                                             ("seamless", "translate")])
@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_new_recognisers_answer_in_every_format(s, model, task, fmt):
    client = s.client(timeout=120)
    endpoint = client.audio.transcriptions if task == "transcribe" else client.audio.translations
    reply = endpoint.create(model=model, file=("speech.wav", wav_upload()), response_format=fmt)
    if fmt == "json":
        assert reply.text
    elif fmt == "text":
        assert isinstance(reply, str) and reply.strip()
    elif fmt == "srt":
        assert reply.startswith("1\n00:00:00,000 --> 00:00:02,000\n")
    elif fmt == "vtt":
        assert reply.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n")
    else:
        assert reply.task == task and reply.language == "en" and reply.duration == 2.0 and reply.text
        assert [(seg.start, seg.end) for seg in reply.segments] == [(0.0, 2.0)]


def test_wav2vec2_word_times_come_from_its_ctc_frames(s):
    client = s.client(timeout=120)
    result = client.audio.transcriptions.create(model="w2v", file=("speech.wav", wav_upload(3.0)),
                                                response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
    words = result.words
    assert words and " ".join(w.word for w in words) == result.text
    assert all(0.0 <= w.start < w.end <= 3.0 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)


def test_long_audio_is_read_in_windows(s):
    client = s.client(timeout=120)
    result = client.audio.transcriptions.create(model="w2v", file=("long.wav", wav_upload(45.0)),
                                                response_format="verbose_json")
    assert [(seg.start, seg.end) for seg in result.segments] == [(0.0, 30.0), (30.0, 45.0)]


def test_seamless_translates_into_english_and_wav2vec2_refuses(s):
    client = s.client(timeout=120)
    translated = client.audio.translations.create(model="seamless", file=("speech.wav", wav_upload()),
                                                  response_format="verbose_json")
    assert translated.task == "translate" and translated.language == "en" and translated.text
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.translations.create(model="w2v", file=("speech.wav", wav_upload()))
    assert refused.value.param == "model"


def test_seamless_transcribes_in_the_language_asked_and_refuses_one_it_lacks(s):
    client = s.client(timeout=120)
    french = client.audio.transcriptions.create(model="seamless", file=("speech.wav", wav_upload()),
                                                language="fr", response_format="verbose_json")
    assert french.language == "fr"
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="seamless", file=("speech.wav", wav_upload()), language="ja")
    assert refused.value.param == "language"
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="w2v", file=("speech.wav", wav_upload()), language="fr")
    assert refused.value.param == "language"


def test_seamless_refuses_word_timestamps_it_cannot_give(s):
    with pytest.raises(openai.BadRequestError) as refused:
        s.client().audio.transcriptions.create(model="seamless", file=("speech.wav", wav_upload()),
                                               response_format="verbose_json", timestamp_granularities=["word"])
    assert refused.value.param == "timestamp_granularities"


def test_one_seamless_model_serves_transcription_translation_and_speech_without_reloading(s):
    client = s.client(timeout=120)
    client.audio.transcriptions.create(model="seamless", file=("speech.wav", wav_upload()))
    pid = s.resident("seamless")["pid"]
    client.audio.translations.create(model="seamless", file=("speech.wav", wav_upload()))
    client.audio.speech.create(model="seamless", voice="alloy", input="Hello.", response_format="wav")
    assert s.resident("seamless")["pid"] == pid


# ---- one budget ----------------------------------------------------------------------------------


def test_a_voice_loop_takes_turns_in_a_budget_that_holds_one_model(tmp_path):
    # On a CPU the arbiter measures a worker's resident memory: a torch + transformers worker reads
    # ~700-900 MiB whatever its tiny model. worker_overhead_mb (one worker's runtime) lifts every estimate
    # to that size class, so that each model fits the budget alone and no two fit it together.
    speech.build(DEFAULT_ROOT)
    models = [entry("hear", "wav2vec2", speech.WAV2VEC2_DIR), {"id": "think", "backend": "fake",
                                                                 "options": {"memory_mb": 300}},
              entry("speak", "vits", speech.VITS_DIR)]
    with serve(tmp_path, models, budget_mb=1400, worker_overhead_mb=700) as served:
        client = served.client(timeout=180)
        for _ in range(2):
            heard = client.audio.transcriptions.create(model="hear", file=("q.wav", wav_upload()))
            answer = client.chat.completions.create(model="think", max_tokens=8,
                                                    messages=[{"role": "user", "content": heard.text}])
            spoken = client.audio.speech.create(model="speak", voice="alloy", response_format="wav",
                                                input=answer.choices[0].message.content)
            assert decoded(spoken.content, "wav")[1] > 0
        snapshot = served.ps()
        assert served.arbiter.peak_mb <= 1400 and sum(snapshot["evictions"].values()) >= 5
        assert len(snapshot["residents"]) == 1
        print(f"\nvoice loop: peak {served.arbiter.peak_mb:.0f} of 1400 MiB, evictions {snapshot['evictions']}")
