"""The README's screenshots of the built-in page (docs/ui-*.png), taken from a real server.

    .venv/bin/python scripts/ui_screenshots.py

Serves the repository's models.yaml (the tiny demo models, built first) under a small budget,
loads enough of them through the public API that one is parked in the warm tier, then opens /ui in
Debian's headless Chromium (`make tools` installs it) at a desktop's and a phone's width.
"""

from __future__ import annotations

import io
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tinymodels import build_all  # noqa: E402

DOCS = ROOT / "docs"
HELLO = [{"role": "user", "content": "What is on the card?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int) -> subprocess.Popen:
    env = {**os.environ, "MODELYARD_PORT": str(port), "MODELYARD_BUDGET_MB": "2600",
           "MODELYARD_RAM_BUDGET_MB": "4000", "MODELYARD_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.1)


def traffic(http: httpx.Client) -> None:
    """A few requests of each kind: the last needs room, so an idle model is parked."""
    tone = io.BytesIO()
    t = np.arange(16000) / 16000
    soundfile.write(tone, (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
    calls = [
        ("/v1/chat/completions", {"json": {"model": "demo-gguf", "messages": HELLO, "max_tokens": 8}}),
        ("/v1/embeddings", {"json": {"model": "demo-embed-gguf", "input": ["a", "b"]}}),
        ("/v1/images/generations", {"json": {"model": "demo-sd", "prompt": "a lighthouse", "size": "64x64"}}),
        ("/v1/audio/transcriptions", {"data": {"model": "demo-whisper"}, "files": {"file": ("t.wav", tone.getvalue())}}),
        ("/v1/audio/speech", {"json": {"model": "demo-tts", "input": "Hello there.", "voice": "alloy"}}),
        ("/v1/chat/completions", {"json": {"model": "demo-chat", "messages": HELLO, "max_tokens": 8}}),
        ("/v1/chat/completions", {"json": {"model": "demo-hf", "messages": HELLO, "max_tokens": 8}}),
    ]
    for path, kwargs in calls:
        http.post(path, **kwargs).raise_for_status()


def main() -> None:
    build_all()
    port = free_port()
    server = start(port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            traffic(http)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            for name, viewport, scheme in (("desktop", {"width": 1280, "height": 720}, "light"),
                                           ("desktop-dark", {"width": 1280, "height": 720}, "dark"),
                                           ("phone", {"width": 390, "height": 844}, "dark")):
                context = browser.new_context(viewport=viewport, color_scheme=scheme, device_scale_factor=1)
                page = context.new_page()
                page.goto(base + "/ui")
                expect(page.locator("#conn")).to_have_attribute("data-state", "live")
                parked = page.locator("#models tr[data-state='parked'] button").first
                parked.click()
                expect(page.locator("#plan li").first).not_to_have_text("Asking the arbiter…")
                page.get_by_label("Message").fill("Which models are on the card?")
                page.get_by_label("Max tokens").fill("24")
                page.get_by_label("Message").press("Enter")
                expect(page.locator("#chat-log .msg.assistant")).to_have_attribute("data-state", "done", timeout=60_000)
                page.mouse.move(0, 0)
                page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
                page.wait_for_timeout(500)
                page.screenshot(path=str(DOCS / f"ui-{name}.png"))
                print(f"docs/ui-{name}.png")
                context.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
