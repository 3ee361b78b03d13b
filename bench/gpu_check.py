"""The measurements of the GPU check (scripts/gpu_check.sh runs them; `--scale dry` runs them on a CPU).

    python bench/gpu_check.py models    --scale full|dry --root DIR        real-shape models + models.yaml
    python bench/gpu_check.py estimates --root DIR --out OUT               estimate vs measured, per engine
    python bench/gpu_check.py promise   --root DIR --out OUT [--budget-mb 12288] [--seconds 90]
    python bench/gpu_check.py decode    --root DIR --out OUT [--llama-bench PATH]

Every figure goes through the real server (`modelyard serve` in a subprocess) or the real adapter, and
is written to OUT as JSON and as a Markdown table with the machine it ran on. Memory is NVML's: per
process (the workers) and device-wide, sampled every 10 ms; on a CPU (dry run) it is the workers' RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import statistics
import struct
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

from bench.machine import describe  # noqa: E402
from server.memory import MIB, MemoryProbe  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me about lighthouses."}]
EOS_BAN = {"2": -100.0}  # </s> of the HF models; the GGUF's EOS is id 2 as well
DRY_WORKER_OVERHEAD_MB = 1200  # a CPU worker's runtime, resident (see cmd_promise)


# ---- the model set ----------------------------------------------------------------------------

def entries(models: dict[str, str], scale: str, cuda: bool) -> list[dict]:
    full = scale == "full"
    return [
        {"id": "llama-8b-q4", "backend": "gguf", "path": models["llama-8b-q4"],
         "options": {"n_ctx": 4096 if full else 1024, "n_parallel": 2}},
        {"id": "llama-7b-nf4", "backend": "hf", "path": models["llama-7b"], "context_length": 4096 if full else 512,
         "options": {"quantization": "4bit", "bnb_4bit_quant_type": "nf4"}},
        {"id": "llama-1b-fp16", "backend": "hf", "path": models["llama-1b"], "context_length": 2048 if full else 512,
         "options": {"dtype": "float16" if cuda else "auto"}},
        {"id": "sd15", "backend": "diffusers", "path": models["sd15"],
         "options": {"default_steps": 20 if full else 2, "default_size": "512x512" if full else "64x64",
                     "sizes": ["512x512"] if full else ["64x64"]}},
        {"id": "whisper-large", "backend": "faster-whisper", "path": models["whisper-large"],
         "options": {"compute_type": "float16" if cuda else "int8", "beam_size": 1, "max_new_tokens": 32}},
    ]


def cmd_models(args) -> None:
    import torch

    from tinymodels import shapes

    started = time.monotonic()
    built = {name: str(path) for name, path in shapes.build(args.root, args.scale).items()}
    registry = {"models": [{**e, "keep_alive": -1} for e in entries(built, args.scale, torch.cuda.is_available())]}
    (args.root / "models.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    sizes = {name: _size_mb(Path(path)) for name, path in built.items()}
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), "files_mb": sizes}, indent=2))


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / MIB, 1)


# ---- a server and a memory sampler ------------------------------------------------------------

class Server:
    def __init__(self, registry: Path, budget_mb: int, log: Path, overhead_mb: int | None = None):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MODELYARD_MODELS": str(registry), "MODELYARD_PORT": str(self.port),
               "MODELYARD_BUDGET_MB": str(budget_mb), "MODELYARD_MODEL_DIRS": str(registry.parent),
               "MODELYARD_MAX_QUEUE": "256", "MODELYARD_LOG_LEVEL": "info", "HF_HUB_OFFLINE": "1"}
        if overhead_mb is not None:
            env["MODELYARD_WORKER_OVERHEAD_MB"] = str(overhead_mb)
        self.log = log.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.base, timeout=900)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.http.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"server did not start; see {log}")
            time.sleep(0.2)

    def worker_pids(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.process.pid).children(recursive=True)}
        except psutil.Error:
            return set()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler:
    """Every 10 ms: the workers' memory (NVML per process on a GPU, RSS on a CPU) and the device's used memory."""

    def __init__(self, pids, interval_s: float = 0.01):
        self.probe = MemoryProbe()
        self.pids = pids
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def device_used_mb(self) -> float | None:
        return self.probe.device_used_mb()

    def workers_mb(self) -> float:
        return sum(self.probe.process_mb(pid) or 0.0 for pid in self.pids())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.workers_mb(), self.device_used_mb()))
            time.sleep(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self) -> tuple[float, float | None]:
        workers = max((s[1] for s in self.samples), default=0.0)
        device = [s[2] for s in self.samples if s[2] is not None]
        return workers, (max(device) if device else None)


# ---- requests ---------------------------------------------------------------------------------

def wav_seconds(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        frames = (struct.pack("<h", int(8000 * math.sin(i / 16000 * 2 * math.pi * 440))) for i in
                  range(int(seconds * 16000)))
        w.writeframes(b"".join(frames))
    return out.getvalue()


def request(http: httpx.Client, entry: dict, audio: bytes, tokens: int = 32) -> httpx.Response:
    if entry["backend"] == "diffusers":
        return http.post("/v1/images/generations", json={"model": entry["id"], "prompt": "a lighthouse",
                                                         "response_format": "b64_json"})
    if entry["backend"] == "faster-whisper":
        return http.post("/v1/audio/transcriptions", data={"model": entry["id"]}, files={"file": ("a.wav", audio)})
    return http.post("/v1/chat/completions", json={"model": entry["id"], "messages": MESSAGES, "max_tokens": tokens,
                                                   "logit_bias": EOS_BAN})


def oom(text: str) -> bool:
    return bool(re.search(r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation",
                          text, re.I))


def write(out: Path, name: str, data: dict, table: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    text = "\n".join([f"### {name}", "", f"machine: {data['machine']}", "", *table, ""])
    (out / f"{name}.md").write_text(text)
    print(text, flush=True)


def machine() -> str:
    probe = MemoryProbe()
    if probe.gpu:
        return describe(f"GPU {probe.device_name()}, {probe.device_total_mb():.0f} MiB")
    return describe("no GPU (dry run)")


def registry_of(root: Path) -> list[dict]:
    return yaml.safe_load((root / "models.yaml").read_text())["models"]


# ---- estimate vs measured ---------------------------------------------------------------------

def cmd_estimates(args) -> None:
    """Each model alone: its estimate (the engine's plan) against NVML's peak for its worker during a request."""
    models = registry_of(args.root)
    server = Server(args.root / "models.yaml", 10**6, args.out / "estimates-server.log")
    audio = wav_seconds(30)
    rows = []
    try:
        for entry in models:
            with Sampler(server.worker_pids) as sampler:
                response = request(server.http, entry, audio)
            resident = next(r for r in server.http.get("/admin/ps").json()["residents"] if r["model"] == entry["id"])
            peak, _ = sampler.peak()
            estimate = resident["estimate"]["total_mb"]
            rows.append({"model": entry["id"], "backend": entry["backend"], "status": response.status_code,
                         "estimate_mb": estimate, "estimate": resident["estimate"], "accounted_mb": resident["memory_mb"],
                         "measured_peak_mb": round(peak, 1),
                         "error_pct": round((estimate - peak) / peak * 100, 1) if peak else None})
            server.http.post("/admin/unload", json={"model": entry["id"]})
    finally:
        server.close()
    table = ["| model | engine | estimate MiB | measured peak MiB | error % | status |", "|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['backend']} | {r['estimate_mb']:.0f} | {r['measured_peak_mb']:.0f} | "
              f"{r['error_pct']} | {r['status']} |" for r in rows]
    write(args.out, "estimates", {"machine": machine(), "rows": rows}, table)


# ---- the 12 GB promise ------------------------------------------------------------------------

def cmd_promise(args) -> None:
    """The server under a budget with models worth about twice it, a mixed concurrent workload."""
    models = registry_of(args.root)
    # A dry run's models are tiny but each CPU worker holds its runtime (torch and friends: 0.8-1.1 GiB
    # resident, more than the whole tiny set): counted as the workers' overhead, the estimates and the
    # budget describe what the arbiter will measure, and the set still has to swap.
    overhead = None if args.budget_mb else DRY_WORKER_OVERHEAD_MB
    budget = args.budget_mb or _dry_budget(args.root, overhead)
    server = Server(args.root / "models.yaml", budget, args.out / "promise-server.log", overhead)
    audio = wav_seconds(5)
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def client(index: int) -> None:
        with httpx.Client(base_url=server.base, timeout=900) as http:
            turn = index
            while time.monotonic() < deadline:
                entry = models[turn % len(models)]
                turn += 1
                started = time.monotonic()
                try:
                    response = request(http, entry, audio, tokens=16)
                    status, body = response.status_code, response.text[:300]
                except httpx.HTTPError as exc:
                    status, body = 0, str(exc)
                with lock:
                    results.append({"model": entry["id"], "status": status, "seconds": time.monotonic() - started,
                                    "oom": oom(body), "error": body if status != 200 else ""})

    baseline = Sampler(server.worker_pids).device_used_mb()
    try:
        with Sampler(server.worker_pids) as sampler:
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        metrics = server.http.get("/metrics").text
    finally:
        server.close()
    log = (args.out / "promise-server.log").read_text(errors="replace")
    peak_workers, peak_device = sampler.peak()
    loads = _metric_sum(metrics, "modelyard_model_loads_total")
    evictions = _metric_sum(metrics, "modelyard_model_evictions_total")
    swap_seconds = _metric_sum(metrics, "modelyard_model_load_duration_seconds_sum")
    ooms = sum(r["oom"] for r in results) + len(re.findall(r"out of memory|OutOfMemoryError", log, re.I))
    answered = sum(r["status"] == 200 for r in results)
    summary = {"machine": machine(), "budget_mb": budget, "models": [e["id"] for e in models],
               "estimates_mb": _estimates(args.root, overhead), "clients": args.clients, "seconds": args.seconds,
               "requests": len(results), "answered_200": answered, "failed": [r for r in results if r["status"] != 200],
               "peak_workers_mb": round(peak_workers, 1),
               "peak_device_used_mb": None if peak_device is None else round(peak_device, 1),
               "device_baseline_mb": None if baseline is None else round(baseline, 1),
               "samples": len(sampler.samples), "oom_errors": ooms, "swaps": loads, "evictions": evictions,
               "swap_seconds": round(swap_seconds, 2),
               "results": [{k: r[k] for k in ("model", "status", "seconds")} for r in results],
               "peak_within_budget": peak_workers <= budget}
    device = "-" if peak_device is None else f"{peak_device:.0f} (baseline {baseline:.0f})"
    table = ["| budget MiB | models (sum of estimates MiB) | peak workers MiB | peak device used MiB | CUDA OOM | "
             "answered | swaps | swap s |", "|---|---|---|---|---|---|---|---|",
             f"| {budget} | {len(models)} ({sum(summary['estimates_mb'].values()):.0f}) | {peak_workers:.0f} | {device} | "
             f"{ooms} | {answered}/{len(results)} | {loads:.0f} | {swap_seconds:.1f} |",
             "", f"peak within budget: {'yes' if summary['peak_within_budget'] else 'NO'}; "
             f"{len(sampler.samples)} samples at 10 ms"]
    write(args.out, "promise", summary, table)


def _estimates(root: Path, overhead_mb: int | None = None) -> dict[str, float]:
    from server.forecast import Room
    from server.registry import load_registry
    from server.settings import Settings

    room = Room.of(Settings(models=root / "models.yaml", worker_overhead_mb=overhead_mb), None)
    registry = load_registry(root / "models.yaml", [root])
    return {spec.id: round(spec.resolve(room.device).estimate().total_mb, 1) for spec in registry}


def _dry_budget(root: Path, overhead_mb: int | None) -> int:
    """On a CPU the set is tiny: a budget of half its sum (and room for the largest) forces the same swapping."""
    estimates = _estimates(root, overhead_mb).values()
    return int(max(max(estimates) * 1.2, sum(estimates) / 2))


def _metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


# ---- decode speed -----------------------------------------------------------------------------

def cmd_decode(args) -> None:
    import torch

    from bench.bench_hf import in_process

    models = {e["id"]: e for e in registry_of(args.root)}
    tokens = args.tokens
    rows: dict[str, Any] = {}
    gguf = models["llama-8b-q4"]
    server = Server(args.root / "models.yaml", 10**6, args.out / "decode-server.log")
    try:
        rows["gguf served (modelyard)"] = _served_rate(server, gguf["id"], tokens, args.rounds)
    finally:
        server.close()
    if args.llama_bench:
        rows["gguf llama-bench tg"] = _llama_bench(args.llama_bench, gguf["path"], tokens)
    kinds = ["dynamic", "static"] + (["cuda-graphs"] if torch.cuda.is_available() else [])
    for model in ("llama-1b-fp16", "llama-7b-nf4"):
        rates = in_process(models[model], tokens, args.rounds, kinds)
        for name, rate in rates.items():
            rows[f"{model} {name}"] = rate
    table = ["| path | tok/s |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in rows.items() if v is not None]
    write(args.out, "decode", {"machine": machine(), "tokens": tokens, "rates": rows}, table)


def _served_rate(server: Server, model: str, tokens: int, rounds: int) -> float:
    """Tokens/s of a whole streamed request (prefill included, as llama-bench's tg is not: see its row)."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "logit_bias": EOS_BAN,
            "stream": True, "stream_options": {"include_usage": True}}
    rates = []
    for _ in range(rounds + 1):
        started, produced = time.monotonic(), 0
        with server.http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    produced = json.loads(line[6:])["usage"]["completion_tokens"]
        rates.append(produced / (time.monotonic() - started))
    return statistics.median(rates[1:])  # the first round loads the model


def _llama_bench(binary: str, model: str, tokens: int) -> float | None:
    result = subprocess.run([binary, "-m", model, "-p", "0", "-n", str(tokens), "-ngl", "99", "-o", "json"],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        print(f"llama-bench failed: {result.stderr[-2000:]}", file=sys.stderr)
        return None
    runs = json.loads(result.stdout)
    return float(runs[0]["avg_ts"]) if runs else None


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.py")
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("models", "estimates", "promise", "decode"):
        p = sub.add_parser(name)
        p.add_argument("--root", type=Path, required=True)
        p.add_argument("--out", type=Path, default=Path("gpu-check-out"))
        if name == "models":
            p.add_argument("--scale", choices=("full", "dry"), default="full")
        if name == "promise":
            p.add_argument("--budget-mb", type=int, default=None, help="default: 12288 on a GPU; dry: half the set")
            p.add_argument("--seconds", type=float, default=90)
            p.add_argument("--clients", type=int, default=6)
        if name == "decode":
            p.add_argument("--tokens", type=int, default=128)
            p.add_argument("--rounds", type=int, default=3)
            p.add_argument("--llama-bench", default=None)
    args = parser.parse_args()
    {"models": cmd_models, "estimates": cmd_estimates, "promise": cmd_promise, "decode": cmd_decode}[args.step](args)


if __name__ == "__main__":
    main()
