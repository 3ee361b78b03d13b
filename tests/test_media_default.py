"""`make serve`'s registry: demo-sd and demo-whisper served to the openai package next to the text models."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time

import numpy as np
import openai
import soundfile
from conftest import ROOT, free_port

import tinymodels


def test_default_registry_serves_demo_sd_and_demo_whisper_next_to_chat():
    tinymodels.build_all()
    port = free_port()
    env = {**os.environ, "MODELYARD_PORT": str(port), "MODELYARD_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        deadline = time.monotonic() + 30
        while True:
            try:
                ids = {m.id for m in client.models.list()}
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, "server did not start"
                time.sleep(0.1)
        assert {"demo-chat", "demo-sd", "demo-whisper"} <= ids
        assert client.chat.completions.create(model="demo-chat", max_tokens=4,
                                              messages=[{"role": "user", "content": "hi"}]).choices
        image = client.images.generate(model="demo-sd", prompt="a lighthouse", response_format="b64_json")
        assert base64.b64decode(image.data[0].b64_json)[:8] == b"\x89PNG\r\n\x1a\n"
        buffer = io.BytesIO()
        t = np.arange(16000) / 16000
        soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
        result = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", buffer.getvalue()))
        assert result.usage.seconds == 1.0
    finally:
        process.terminate()
        process.wait(30)
