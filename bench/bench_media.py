"""Media benchmark: modelyard against the same pipelines called in-process.

Images: median milliseconds per image at fixed steps and size (b64_json over HTTP, through the
arbiter and the worker process) against the same diffusers pipeline called in this process, for the
tiny demo SD pipeline and a wider random SD pipeline (compute-bound). Speech recognition: the
real-time factor (processing seconds / audio seconds) of a generated 30 s clip uploaded as WAV,
against faster-whisper's transcribe() on the same samples in-process (Whisper) and against our own
adapter called in this process (Wav2Vec2, SeamlessM4T). Speech synthesis: processing seconds per
second of audio made, a WAV over HTTP against the adapter in-process (VITS, SeamlessM4T). Same
weights, threads and settings on both sides, rounds alternating between the two; the models are
random, so the number of tokens per window is capped (max_new_tokens).

    [BENCH_THREADS=1] .venv/bin/python bench/bench_media.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.contract import Cancel, SpeechParams, TranscriptionParams  # noqa: E402
from backends.plan import Device  # noqa: E402
from bench.machine import describe  # noqa: E402
from server.registry import parse_spec  # noqa: E402
from tinymodels import DEFAULT_ROOT, media, speech  # noqa: E402

STEPS = 8
CLIP_SECONDS = 30.0
# One compute thread per side by default: on a shared machine, OpenMP barriers across threads that
# other processes deschedule make multi-thread timings swing tenfold; one thread keeps them comparable.
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
WHISPER_OPTIONS = {"compute_type": "int8", "beam_size": 1, "device": "cpu", "cpu_threads": THREADS,
                   "max_new_tokens": 32}


def machine() -> str:
    return describe()


def build_wide_sd(out: Path) -> None:
    """A random SD pipeline with wider blocks, so that the UNet's compute dominates."""
    if out.is_dir():
        return
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tiny = StableDiffusionPipeline.from_pretrained(DEFAULT_ROOT / "tiny-sd")
    unet = UNet2DConditionModel(
        block_out_channels=(64, 128), layers_per_block=2, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=8)
    pipe = StableDiffusionPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                   unet=unet, scheduler=tiny.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


def start_server(port: int, registry: Path) -> subprocess.Popen:
    env = {**os.environ, "MODELYARD_MODELS": str(registry), "MODELYARD_PORT": str(port),
           "MODELYARD_LOG_LEVEL": "warning", "MODELYARD_MODEL_DIRS": f"{DEFAULT_ROOT},{registry.parent}",
           "MODELYARD_BUDGET_MB": "8192", "OMP_NUM_THREADS": str(THREADS)}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def paired_median_ms(served, local, rounds: int) -> tuple[float, float]:
    """Medians of alternating rounds, so that load from other processes hits both sides alike."""
    served()  # warm-up (and the model load, on the server side)
    local()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, into in ((served, times[0]), (local, times[1])):
            began = time.perf_counter()
            fn()
            into.append((time.perf_counter() - began) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_images(http: httpx.Client, path: Path, model: str, size: int, rounds: int) -> tuple[float, float]:
    import torch
    from diffusers import StableDiffusionPipeline

    body = {"model": model, "prompt": "a lighthouse", "size": f"{size}x{size}", "response_format": "b64_json",
            "steps": STEPS, "seed": 1}
    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def local():
        image = pipe("a lighthouse", width=size, height=size, num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(1)).images[0]
        image.save(io.BytesIO(), format="PNG")  # the server encodes a PNG too

    served, in_process = paired_median_ms(
        lambda: http.post("/v1/images/generations", json=body).raise_for_status(), local, rounds)
    http.post("/admin/unload", json={"model": model})
    return served, in_process


def clip_wav() -> tuple[bytes, np.ndarray]:
    """A 30 s tone over noise, as WAV bytes and as samples."""
    t = np.arange(int(CLIP_SECONDS * 16000)) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    samples = samples.astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV")
    return buffer.getvalue(), samples


def bench_whisper(http: httpx.Client, rounds: int) -> tuple[float, float]:
    from faster_whisper import WhisperModel

    wav, samples = clip_wav()

    def served():
        http.post("/v1/audio/transcriptions", files={"file": ("clip.wav", wav)},
                  data={"model": "whisper", "response_format": "verbose_json"}).raise_for_status()

    model = WhisperModel(str(DEFAULT_ROOT / "tiny-whisper"), device="cpu", compute_type="int8", cpu_threads=THREADS)

    def local():
        segments, _ = model.transcribe(samples, beam_size=1, max_new_tokens=32)
        list(segments)

    served_ms, local_ms = paired_median_ms(served, local, rounds)
    http.post("/admin/unload", json={"model": "whisper"})
    return served_ms / 1000 / CLIP_SECONDS, local_ms / 1000 / CLIP_SECONDS


SPEECH_MODELS = {
    "wav2vec2": {"backend": "wav2vec2", "path": str(DEFAULT_ROOT / speech.WAV2VEC2_DIR), "options": {"device": "cpu"}},
    "seamless": {"backend": "seamless-m4t", "path": str(DEFAULT_ROOT / speech.SEAMLESS_DIR),
                 "options": {"device": "cpu", "max_new_tokens": 32}},
    "vits": {"backend": "vits", "path": str(DEFAULT_ROOT / speech.VITS_DIR), "options": {"device": "cpu"}},
}
SPEECH_TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)


def in_process(model: str):
    """Our adapter for `model`, loaded in this process from the plan the server would make."""
    import importlib

    plan = parse_spec({"id": model, **SPEECH_MODELS[model]}).resolve(Device())
    module, _, name = plan.adapter.partition(":")
    return getattr(importlib.import_module(module), name)(plan)


def run(chunks) -> tuple[list, object]:
    out = []
    try:
        while True:
            out.append(next(chunks))
    except StopIteration as done:
        return out, done.value


def bench_recogniser(http: httpx.Client, model: str, wav: bytes, samples: np.ndarray, rounds: int):
    adapter = in_process(model)
    with tempfile.NamedTemporaryFile(suffix=".f32") as audio:
        samples.astype("<f4").tofile(audio.name)

        def served():
            http.post("/v1/audio/transcriptions", files={"file": ("clip.wav", wav)},
                      data={"model": model, "response_format": "verbose_json"}).raise_for_status()

        served_ms, local_ms = paired_median_ms(
            served, lambda: run(adapter.transcribe(TranscriptionParams(audio_path=audio.name), Cancel())), rounds)
    http.post("/admin/unload", json={"model": model})
    return served_ms / 1000 / CLIP_SECONDS, local_ms / 1000 / CLIP_SECONDS


def bench_synthesis(http: httpx.Client, model: str, rounds: int) -> tuple[float, float]:
    """Seconds of processing per second of audio made (lower is faster)."""
    adapter = in_process(model)
    made = {"served": 0.0, "local": 0.0}

    def served():
        reply = http.post("/v1/audio/speech", json={"model": model, "voice": "alloy", "input": SPEECH_TEXT,
                                                    "response_format": "pcm"}).raise_for_status()
        made["served"] = len(reply.content) / 2 / 24000

    def local():
        made["local"] = run(adapter.synthesize(SpeechParams(text=SPEECH_TEXT), Cancel()))[1]["seconds"]

    served_ms, local_ms = paired_median_ms(served, local, rounds)
    http.post("/admin/unload", json={"model": model})
    return served_ms / 1000 / made["served"], local_ms / 1000 / made["local"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--port", type=int, default=8391)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)  # the worker gets the same through OMP_NUM_THREADS
    media.build(DEFAULT_ROOT)
    speech.build(DEFAULT_ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        wide = Path(tmp) / "wide-sd"
        build_wide_sd(wide)
        sd = {"default_steps": STEPS, "max_steps": 50, "default_size": "64x64", "min_side": 16, "max_side": 512,
              "device": "cpu"}
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [
            {"id": "tiny-sd", "backend": "diffusers", "path": str(DEFAULT_ROOT / "tiny-sd"), "options": sd},
            {"id": "wide-sd", "backend": "diffusers", "path": str(wide), "options": sd},
            {"id": "whisper", "backend": "faster-whisper", "path": str(DEFAULT_ROOT / "tiny-whisper"),
             "options": WHISPER_OPTIONS},
            *({"id": name, **entry} for name, entry in SPEECH_MODELS.items()),
        ]}))
        server = start_server(args.port, registry)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600) as http:
                print(f"machine: {machine()}")
                print(f"rounds: {args.rounds} (medians of alternating rounds), steps {STEPS}, CPU fp32, "
                      f"{THREADS} compute thread(s) per side (BENCH_THREADS)")
                for model, path, size in (("tiny-sd", DEFAULT_ROOT / "tiny-sd", 64), ("wide-sd", wide, 64)):
                    served, local = bench_images(http, path, model, size, args.rounds)
                    print(f"{model} {size}x{size}: modelyard {served:.1f} ms/image, in-process {local:.1f} ms/image "
                          f"(overhead {served - local:+.1f} ms, {served / local:.2f}x)")
                served_rtf, local_rtf = bench_whisper(http, args.rounds)
                print(f"whisper, {CLIP_SECONDS:.0f} s clip (int8, beam 1, max_new_tokens 32): real-time factor "
                      f"modelyard {served_rtf:.4f} (incl. upload and decode), in-process {local_rtf:.4f}")
                wav, samples = clip_wav()
                for model in ("wav2vec2", "seamless"):
                    served_rtf, local_rtf = bench_recogniser(http, model, wav, samples, args.rounds)
                    print(f"{model} recognition, {CLIP_SECONDS:.0f} s clip: real-time factor modelyard "
                          f"{served_rtf:.4f} (incl. upload and decode), in-process adapter {local_rtf:.4f}")
                for model in ("vits", "seamless"):
                    served_rtf, local_rtf = bench_synthesis(http, model, args.rounds)
                    print(f"{model} synthesis, 6 sentences: real-time factor modelyard {served_rtf:.4f} "
                          f"(incl. encoding to 24 kHz PCM), in-process adapter {local_rtf:.4f}")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
