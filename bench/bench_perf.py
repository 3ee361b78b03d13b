"""Performance against the peers (issue 12): one table per engine, the peers side by side, medians over
alternating rounds, the machine, and each ratio against its target.

    python bench/bench_perf.py [--rounds 3] [--sections gguf,embed,budget,hf]

Contenders, all up at once and measured in turn (the order rotates every round, so load from
anything else on the machine falls on all of them alike), through one aiohttp client:
- `llama-server`, built once from the llama.cpp sources the installed llama-cpp-python vendors
  (bench/llama_server.py), `-np 4`;
- llama-cpp-python's own server (`python -m llama_cpp.server`);
- modelyard (`python -m server serve`).

Models: random llama GGUFs built once into ~/.cache/modelyard/bench: tiny (V512 D64 L2: compute
is near zero, so what is measured is each server's own overhead), medium (V32000 D512 L8 f16: the
engine dominates), an embedding model (V32000 D384 L6 f16, mean pooling); the demo HF model.

Sections:
- gguf:   tiny req/s at c=1 and c=8 (chat, 16 tokens, not streamed), TTFT and streamed chunks/s;
          medium decode tok/s at c=1 (n_threads 2 and 1) and c=4, TTFT.
- embed:  /v1/embeddings req/s at c=8, 16 short texts per request, against llama-server --embeddings.
- budget: per engine, µs per token spent outside the engine's own compute, in the worker (CPU time
          less the time inside the model's forward) and in the HTTP process (its CPU time), over a
          long stream from a tiny model with one engine thread.
- hf:     the demo HF model served against `generate` in-process (single stream), and c=4 against c=1.

Greedy (temperature 0) with end-of-sequence banned by logit_bias, so every request makes exactly its
max_tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import llama_server  # noqa: E402
from bench.machine import describe  # noqa: E402
from tinymodels import DEFAULT_ROOT  # noqa: E402
from tinymodels import gguf as tiny_gguf  # noqa: E402

BENCH_DIR = Path("~/.cache/modelyard/bench").expanduser()
NO_EOS = {"2": -100, "4": -100}  # </s> and <|im_end|> in tinymodels' vocabularies
CHAT = [{"role": "user", "content": "Tell me a story about a lighthouse."}]
PROMPT = "Once upon a time, in a quiet village by the sea, there lived"
TEXTS = [f"short text number {i} about the sea, ships and harbours" for i in range(16)]

# Targets (modelyard / llama-server unless said otherwise); None: printed, no target.
TARGETS = {
    "tiny req/s c=1": 0.9, "tiny req/s c=8": 0.9, "tiny TTFT ms": 1.5,
    "medium decode tok/s c=1 t=2": 0.95, "medium decode tok/s c=1 t=1": 1.0, "medium decode tok/s c=4": 1.05,
    "medium TTFT ms": 1.15, "embed req/s c=8": 1.0,
}
LOWER_IS_BETTER = ("TTFT",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- models ------------------------------------------------------------------------------------


def bench_models() -> dict[str, Path]:
    import numpy as np

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return {
        "tiny": tiny_gguf.build_file(BENCH_DIR / "bench-llama-512-64x2.gguf", vocab=512, dim=64, layers=2, heads=4,
                                     context=4096, seed=3),
        "medium": tiny_gguf.build_file(BENCH_DIR / "bench-llama-32k-512x8-f16.gguf", vocab=32000, dim=512, layers=8,
                                       heads=8, ffn=1376, context=4096, dtype=np.float16, seed=7),
        "embed": tiny_gguf.build_file(BENCH_DIR / "bench-embed-32k-384x6-f16.gguf", vocab=32000, dim=384, layers=6,
                                      heads=6, ffn=1024, context=512, dtype=np.float16, fim=False, chat_template=None,
                                      pooling=True, seed=11),
    }


# ---- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    base: str
    models: dict[str, str] = field(default_factory=dict)  # our key -> the name the server knows it by

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_ready(server: Server, path: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base + path, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} did not start")


def start_llama_server(binary: Path, model: Path, threads: int, *, ctx: int = 2048, embeddings: bool = False,
                       name: str = "llama-server") -> Server:
    port = free_port()
    args = [str(binary), "-m", str(model), "--port", str(port), "-t", str(threads), "-tb", str(threads),
            "-np", "4", "-c", str(ctx), "--log-disable"]
    if embeddings:
        args += ["--embeddings", "--pooling", "mean", "-ub", str(ctx), "-b", str(ctx)]
    else:  # its jinja parser refuses the tiny models' tool-call template; the template is ChatML
        args += ["--no-jinja", "--chat-template", "chatml"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(name, process, f"http://127.0.0.1:{port}")
    wait_ready(server, "/health")
    return server


def start_llama_cpp_python(model: Path, threads: int, *, ctx: int = 2048) -> Server:
    """interrupt_requests off, or a new request cuts the running stream."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias",
                                "m", "--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(threads),
                                "--n_threads_batch", str(threads), "--verbose", "False",
                                "--interrupt_requests", "False"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server("llama-cpp-python", process, f"http://127.0.0.1:{port}")
    wait_ready(server, "/v1/models")
    return server


def start_modelyard(entries: list[dict], env: dict[str, str] | None = None, tmp: Path | None = None,
                    root: Path = ROOT, name: str = "modelyard") -> Server:
    """`root`: the checkout to run (another one, e.g. before a change, with --baseline)."""
    port = free_port()
    tmp = tmp or Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    registry = tmp / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": [{"keep_alive": -1, **e} for e in entries]}))
    dirs = {str(Path(e["path"]).parent) for e in entries if "path" in e} | {e["path"] for e in entries if "path" in e}
    full_env = {**os.environ, "MODELYARD_MODEL_DIRS": ",".join(sorted(dirs) or [str(tmp)]), "MODELYARD_MAX_QUEUE": "1000",
                "MODELYARD_BUDGET_MB": "16384", **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(port), "--models",
                                str(registry)], cwd=root, env={**full_env, "PYTHONPATH": str(root)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(name, process, f"http://127.0.0.1:{port}")
    wait_ready(server, "/health/ready")
    return server


# ---- workloads (one aiohttp client for everyone) -----------------------------------------------


async def _post(session: aiohttp.ClientSession, path: str, body: dict) -> dict:
    async with session.post(path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status} {data[:300]!r}")
        return orjson.loads(data)


async def request_rate(base: str, path: str, body: dict, concurrency: int, total: int) -> float:
    """Requests per second, `concurrency` clients sending `total` requests in all."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        await _post(session, path, body)  # warm: load, connections
        left = total

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await _post(session, path, body)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def streaming_session(base: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(force_close=True))


@dataclass
class Streamed:
    ttft: float  # s to the first content
    first: float  # absolute time of the first content
    last: float  # absolute time of the last content
    tokens: int
    chunks: int  # content events


async def stream_once(session: aiohttp.ClientSession, model: str, max_tokens: int, prompt: str = PROMPT) -> Streamed:
    """One streamed completion (on a session that does not reuse connections: llama-server closes one
    after a stream)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "logit_bias": NO_EOS, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = last = None
    chunks = tokens = 0
    async with session.post("/v1/completions", data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            raise RuntimeError(f"stream: {r.status} {(await r.read())[:300]!r}")
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            data = orjson.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            choices = data.get("choices") or []
            if choices and choices[0].get("text"):
                last = time.perf_counter()
                chunks += 1
                if first is None:
                    first = last
    return Streamed((first or started) - started, first or started, last or started, tokens or chunks, chunks)


async def decode(base: str, model: str, concurrency: int, max_tokens: int) -> tuple[float, list[float], float]:
    """(aggregate tok/s over the wall time, each request's TTFT in s, chunks per token)."""
    async with streaming_session(base) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_once(session, model, max_tokens) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    tokens = sum(r.tokens for r in results)
    return tokens / elapsed, [r.ttft for r in results], sum(r.chunks for r in results) / max(tokens, 1)


async def single_decode(base: str, model: str, max_tokens: int) -> tuple[float, float]:
    """One stream: (decode tok/s from its first token to its last, TTFT in s)."""
    async with streaming_session(base) as session:
        r = await stream_once(session, model, max_tokens)
    return (r.tokens - 1) / max(r.last - r.first, 1e-9), r.ttft


async def stream_rate(base: str, model: str, max_tokens: int) -> tuple[float, float]:
    """(content chunks/s, tokens/s) over one long stream."""
    async with streaming_session(base) as session:
        r = await stream_once(session, model, max_tokens)
    span = max(r.last - r.first, 1e-9)
    return (r.chunks - 1) / span, (r.tokens - 1) / span


async def ttft(base: str, model: str, repeats: int = 5) -> float:
    """Median time to the first token of short streamed requests, in s."""
    async with streaming_session(base) as session:
        return statistics.median([(await stream_once(session, model, 4)).ttft for _ in range(repeats)])


# ---- the rounds --------------------------------------------------------------------------------


Measure = Callable[[], Awaitable[float]]


class Table:
    """Samples per (metric, contender); medians, ratios against llama-server, targets."""

    def __init__(self, title: str, contenders: list[str]):
        self.title = title
        self.contenders = contenders
        self.samples: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.notes: list[str] = []

    def add(self, metric: str, contender: str, value: float) -> None:
        self.samples[metric, contender].append(value)

    def median(self, metric: str, contender: str) -> float | None:
        values = self.samples.get((metric, contender))
        return statistics.median(values) if values else None

    def print(self) -> None:
        metrics = list(dict.fromkeys(metric for metric, _ in self.samples))
        print(f"\n### {self.title}\n")
        print(f"| metric | {' | '.join(self.contenders)} | modelyard / llama-server | target |")
        print(f"|---|{'---|' * len(self.contenders)}---|---|")
        for metric in metrics:
            cells = [self._cell(self.median(metric, c)) for c in self.contenders]
            ours, peer = self.median(metric, "modelyard"), self.median(metric, "llama-server")
            ratio = verdict = ""
            if ours and peer:
                ratio = f"{ours / peer:.2f}"
                target = TARGETS.get(metric)
                if target is not None:
                    lower = any(k in metric for k in LOWER_IS_BETTER)
                    met = ours / peer <= target if lower else ours / peer >= target
                    verdict = f"{'≤' if lower else '≥'} {target} {'met' if met else 'NOT met'}"
            print(f"| {metric} | {' | '.join(cells)} | {ratio} | {verdict} |")
        for note in self.notes:
            print(f"\n{note}")

    @staticmethod
    def _cell(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def alternate(rounds: int, table: Table, work: dict[str, dict[str, Measure]]) -> None:
    """work: metric -> contender -> measurement; every round measures each metric on each contender,
    the contenders' order rotated round by round."""
    for r in range(rounds):
        for metric, by_contender in work.items():
            names = list(by_contender)
            for name in names[r % len(names):] + names[: r % len(names)]:
                table.add(metric, name, asyncio.run(by_contender[name]()))


# ---- sections ----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(*starters: Callable[[], Server]) -> Iterator[list[Server]]:
    servers: list[Server] = []
    try:
        for start in starters:
            servers.append(start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def gguf_section(models: dict[str, Path], binary: Path, rounds: int, baseline: Path | None = None) -> Table:
    columns = ["llama-cpp-python", "llama-server", "modelyard"] + (["modelyard before"] if baseline else [])
    table = Table("GGUF (llama.cpp): modelyard against llama-server and llama-cpp-python's server", columns)
    tiny, medium = models["tiny"], models["medium"]
    chat = {"messages": CHAT, "max_tokens": 16, "temperature": 0, "logit_bias": NO_EOS}
    entries = [{"id": "tiny", "backend": "gguf", "path": str(tiny), "options": {"n_ctx": 2048, "n_threads": 2}},
               {"id": "medium", "backend": "gguf", "path": str(medium), "options": {"n_ctx": 2048, "n_threads": 2}},
               {"id": "medium-t1", "backend": "gguf", "path": str(medium), "options": {"n_ctx": 2048, "n_threads": 1}}]

    def ours() -> Server:
        return start_modelyard(entries)

    def before() -> Server:
        return start_modelyard(entries, root=baseline, name="modelyard before")

    starters = [ours, before] if baseline else [ours]
    with running(*starters, lambda: start_llama_server(binary, tiny, 2), lambda: start_llama_cpp_python(tiny, 2)) as up:
        *mine, peer, lcp = up
        on = {"llama-server": (peer, "m"), "llama-cpp-python": (lcp, "m"), **{s.name: (s, "tiny") for s in mine}}
        for server, model in on.values():
            asyncio.run(request_rate(server.base, "/v1/chat/completions", {**chat, "model": model}, 1, 2))
        work: dict[str, dict[str, Measure]] = {}
        for c in (1, 8):
            work[f"tiny req/s c={c}"] = {
                name: (lambda s=s, m=m, c=c: request_rate(s.base, "/v1/chat/completions", {**chat, "model": m}, c,
                                                          60 if c == 1 else 120))
                for name, (s, m) in on.items()}
        work["tiny TTFT ms"] = {name: (lambda s=s, m=m: _ms(ttft(s.base, m))) for name, (s, m) in on.items()}
        work["tiny stream chunks/s"] = {name: (lambda s=s, m=m: _first(stream_rate(s.base, m, 512)))
                                        for name, (s, m) in on.items()}
        work["tiny stream tok/s"] = {name: (lambda s=s, m=m: _second(stream_rate(s.base, m, 512)))
                                     for name, (s, m) in on.items()}
        alternate(rounds, table, work)
    with running(*starters, lambda: start_llama_server(binary, medium, 2),
                 lambda: start_llama_server(binary, medium, 1, name="llama-server t1"),
                 lambda: start_llama_cpp_python(medium, 2)) as up:
        *mine, peer, peer1, lcp = up
        for server in mine:
            for model in ("medium", "medium-t1"):
                asyncio.run(decode(server.base, model, 1, 4))  # load and warm
        for server in (peer, peer1, lcp):
            asyncio.run(decode(server.base, "m", 1, 4))
        on = {"llama-server": (peer, "m"), "llama-cpp-python": (lcp, "m"), **{s.name: (s, "medium") for s in mine}}
        on1 = {"llama-server": (peer1, "m"), **{s.name: (s, "medium-t1") for s in mine}}
        work = {
            "medium decode tok/s c=1 t=2": {n: (lambda s=s, m=m: _first(single_decode(s.base, m, 64)))
                                            for n, (s, m) in on.items()},
            "medium decode tok/s c=1 t=1": {n: (lambda s=s, m=m: _first(single_decode(s.base, m, 64)))
                                            for n, (s, m) in on1.items()},
            "medium decode tok/s c=4": {n: (lambda s=s, m=m: _first(decode(s.base, m, 4, 64)))
                                        for n, (s, m) in on.items()},
            "medium TTFT ms": {n: (lambda s=s, m=m: _ms(ttft(s.base, m))) for n, (s, m) in on.items()},
        }
        alternate(rounds, table, work)
    table.notes.append("c=1 decode: (tokens - 1) / (last token - first token) of one 64-token stream; c=4: all "
                       "tokens over the wall time of four concurrent streams; t=1 / t=2: engine threads (n_threads / "
                       "-t); llama-server -np 4, modelyard n_parallel 4; llama-cpp-python serves one request at a time.")
    return table


def embed_section(models: dict[str, Path], binary: Path, rounds: int) -> Table:
    table = Table("Embeddings (GGUF): 16 short texts per request", ["llama-server", "modelyard"])
    path = models["embed"]
    entries = [{"id": "embed", "backend": "gguf", "path": str(path),
                "options": {"embedding": True, "n_ctx": 512, "n_threads": 2}}]
    with running(lambda: start_modelyard(entries),
                 lambda: start_llama_server(binary, path, 2, ctx=512 * 4, embeddings=True)) as (ours, peer):
        on = {"llama-server": (peer, "m"), "modelyard": (ours, "embed")}
        work: dict[str, dict[str, Measure]] = {}
        for c in (1, 8):
            work[f"embed req/s c={c}"] = {
                n: (lambda s=s, m=m, c=c: request_rate(s.base, "/v1/embeddings",
                                                        {"model": m, "input": TEXTS, "encoding_format": "float"},
                                                        c, 40 if c == 1 else 80))
                for n, (s, m) in on.items()}
        alternate(rounds, table, work)
    return table


async def _ms(seconds: Awaitable[float]) -> float:
    return 1000 * await seconds


async def _first(pair: Awaitable[tuple]) -> float:
    return (await pair)[0]


async def _second(pair: Awaitable[tuple]) -> float:
    return (await pair)[1]


# ---- the per-token budget ----------------------------------------------------------------------


def budget_section(models: dict[str, Path], rounds: int, tokens: int = 2000) -> Table:
    """µs per token outside the engine's compute, in each process. The worker's: its CPU time less
    the CPU time its engine reports inside the model's forward (adapter stats `engine_cpu_s`: one
    engine thread, so the forward runs on the thread that calls it); the HTTP process's: its CPU time.
    CPU time, not wall time: other load on the machine does not count."""
    from tinymodels import hf as tiny_hf

    tiny_hf.build(DEFAULT_ROOT)
    table = Table("Per-token budget: µs per token outside the engine's own compute (target ≤ 30 each)",
                  ["worker", "server", "SSE events per token"])
    entries = [{"id": "gguf", "backend": "gguf", "path": str(models["tiny"]), "options": {"n_ctx": 4096, "n_threads": 1}},
               {"id": "hf", "backend": "hf", "path": str(DEFAULT_ROOT / "tiny-hf"), "options": {}}]
    server = start_modelyard(entries, env={"OMP_NUM_THREADS": "1"})
    try:
        http = psutil.Process(server.process.pid)
        for model, max_tokens in (("gguf", tokens), ("hf", min(tokens, 400))):
            asyncio.run(decode(server.base, model, 1, 8))  # load and warm
            worker = _worker_of(http)
            for _ in range(rounds):
                before = _cpu(worker), _cpu(http), _engine_seconds(server, model)
                _, _, events_per_token = asyncio.run(decode(server.base, model, 1, max_tokens))
                after = _cpu(worker), _cpu(http), _engine_seconds(server, model)
                engine = after[2] - before[2]
                table.add(f"{model}: µs/token", "worker", 1e6 * (after[0] - before[0] - engine) / max_tokens)
                table.add(f"{model}: µs/token", "server", 1e6 * (after[1] - before[1]) / max_tokens)
                table.add(f"{model}: µs/token", "SSE events per token", events_per_token)
    finally:
        server.stop()
    table.notes.append(f"One {tokens}-token stream (HF: {min(tokens, 400)}) per round, greedy, n_threads 1 / "
                       "OMP_NUM_THREADS 1; GGUF: the V512 D64 L2 file; HF: the demo model (fp32).")
    return table


def _worker_of(http: psutil.Process) -> psutil.Process:
    workers = [p for p in http.children(recursive=True) if "backends.worker_main" in " ".join(p.cmdline())]
    return max(workers, key=lambda p: p.create_time())


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _engine_seconds(server: Server, model: str) -> float:
    import httpx

    for entry in httpx.get(server.base + "/admin/ps", params={"stats": "true"}, timeout=10).json()["residents"]:
        if entry["model"] == model:
            return float(entry["worker"]["engine_cpu_s"])
    raise RuntimeError(f"{model} is not resident")


# ---- HF ----------------------------------------------------------------------------------------


def hf_section(rounds: int, tokens: int = 64) -> Table:
    from bench import bench_hf

    table = Table("HF transformers (CPU): served against generate() in-process, and several streams",
                  ["generate in-process", "modelyard served c=1", "modelyard served c=4 (aggregate)"])
    rates = bench_hf.served_against_generate(list(bench_hf.FORMATS), tokens, rounds)
    for fmt, by_kind in rates.items():
        for kind, rate in by_kind.items():
            table.add(f"{fmt} tok/s", kind, rate)
    for fmt, by_kind in rates.items():
        served = by_kind["modelyard served c=1"] / by_kind["generate in-process"]
        batched = by_kind["modelyard served c=4 (aggregate)"] / by_kind["modelyard served c=1"]
        table.notes.append(f"{fmt}: served / generate {served:.2f} (target ≥ 0.95 {'met' if served >= 0.95 else 'NOT met'}); "
                           f"c=4 / c=1 {batched:.2f} (target ≥ 2 {'met' if batched >= 2 else 'NOT met'})")
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sections", default="gguf,embed,budget,hf")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another modelyard checkout measured beside this one (e.g. before a change)")
    args = parser.parse_args()
    sections = args.sections.split(",")
    import llama_cpp

    binary = llama_server.ensure()
    models = bench_models()
    tiny_gguf.build(DEFAULT_ROOT)
    print(f"machine: {describe(f'llama-cpp-python {llama_cpp.__version__}', f'llama-server {binary}')}")
    print(f"medians of {args.rounds} alternating rounds; greedy, end-of-sequence banned")
    tables = []
    if "gguf" in sections:
        tables.append(gguf_section(models, binary, args.rounds, args.baseline))
    if "embed" in sections:
        tables.append(embed_section(models, binary, args.rounds))
    if "budget" in sections:
        tables.append(budget_section(models, args.rounds))
    if "hf" in sections:
        tables.append(hf_section(args.rounds))
    for table in tables:
        table.print()


if __name__ == "__main__":
    main()
