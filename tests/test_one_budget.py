"""One budget across kinds of model: text, image and speech workers share one arbiter.

The budget holds only one of {text, image, speech} at a time; a mixed, concurrent sequence of
requests across the three must all succeed without the accounted memory ever exceeding the budget.
"""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile
from conftest import serve

from tinymodels import DEFAULT_ROOT, media

# On CPU a worker's resident memory is what the arbiter measures: a torch + diffusers worker reads
# 850-1,100 MiB (more when its libraries' pages are all in the page cache, as right after an
# install), a faster-whisper worker ~90 MiB. worker_overhead_mb (the runtime cost of one worker)
# lifts the small ones so that any two models together exceed the budget while each fits alone.
OVERHEAD_MB = 600
BUDGET_MB = 1300
TEXT_MB = 300


def wav_bytes(seconds: float = 2.0) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def test_text_image_and_speech_share_one_budget_one_at_a_time(tmp_path):
    media.build(DEFAULT_ROOT)
    models = [
        {"id": "text", "backend": "fake", "options": {"memory_mb": TEXT_MB, "token_latency_s": 0.01}},
        {"id": "image", "backend": "diffusers", "path": str(DEFAULT_ROOT / "tiny-sd"),
         "options": {"default_steps": 2, "default_size": "32x32", "min_side": 16, "device": "cpu"}},
        {"id": "speech", "backend": "faster-whisper", "path": str(DEFAULT_ROOT / "tiny-whisper"),
         "options": {"compute_type": "int8", "beam_size": 1, "device": "cpu", "cpu_threads": 1,
                     "max_new_tokens": 16}},
    ]
    audio = wav_bytes()
    with serve(tmp_path, models, budget_mb=BUDGET_MB, worker_overhead_mb=OVERHEAD_MB) as s:
        client = s.client(timeout=300)

        def text() -> str:
            reply = client.chat.completions.create(model="text", max_tokens=5,
                                                   messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content
            return "text"

        def image() -> str:
            result = client.images.generate(model="image", prompt="fox", response_format="b64_json")
            assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG")
            return "image"

        def speech() -> str:
            result = client.audio.transcriptions.create(model="speech", file=("a.wav", audio),
                                                        response_format="verbose_json")
            assert abs(result.duration - 2.0) < 0.01
            return "speech"

        # Three clients, each cycling through the kinds in its own order, at the same time.
        plans = [[text, image, speech, text], [image, speech, text, image], [speech, text, image, speech]]
        samples: list[dict] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(s.ps())
                done.wait(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(len(plans)) as pool:
                results = list(pool.map(lambda plan: [call() for call in plan], plans))
        finally:
            done.set()
            sampler.join()

        assert [len(r) for r in results] == [4, 4, 4]  # every request succeeded
        for snapshot in samples:
            assert snapshot["used_mb"] <= BUDGET_MB, snapshot
            ready = [r for r in snapshot["residents"] if r["state"] in ("ready", "draining", "loading")]
            assert len(ready) <= 1, snapshot  # one kind of model at a time
        measured = {r["model"]: r["memory_mb"] for snap in samples for r in snap["residents"]}
        assert s.arbiter.peak_mb <= BUDGET_MB
        loads = s.arbiter.loads
        assert loads >= 3  # each kind was loaded at least once; every switch between kinds is a load
        print(f"\none budget: {loads} loads for 12 requests across text, image and speech; "
              f"peak {s.arbiter.peak_mb:.0f} of {BUDGET_MB} MiB; accounted per model {measured}; "
              f"{len(samples)} /admin/ps samples")
