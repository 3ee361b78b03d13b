"""GGUF benchmark: modelyard against llama-cpp-python's own server and against in-process calls.

    python bench/bench_gguf.py [--repeats 3] [--max-tokens 128]

Builds (once, into ~/.cache/modelyard/bench) a compute-bound random llama GGUF: vocab 32000,
dim 512, 8 layers, f16. Then, one server after the other on localhost ports, measures decode
tokens/s at concurrency 1 and 4 (fixed max_tokens; EOS banned through logit_bias so lengths stay
fixed), time to first token, and requests/s on the tiny demo model; and the same decode in-process
through llama-cpp-python (the cost of our HTTP + worker hop). Prints medians and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from tinymodels import DEFAULT_ROOT  # noqa: E402
from tinymodels import gguf as tiny  # noqa: E402

BENCH_FILE = Path("~/.cache/modelyard/bench/bench-llama-32k-512x8-f16.gguf").expanduser()
PROMPT = "Once upon a time, in a quiet village by the sea, there lived"
NO_EOS = {"2": -100, "4": -100}  # </s> and <|im_end|> in tinymodels' vocabulary


def build_bench_model() -> Path:
    import numpy as np

    return tiny.build_file(BENCH_FILE, vocab=32000, dim=512, layers=8, heads=8, ffn=1376, context=4096,
                           dtype=np.float16, seed=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    import llama_cpp

    return describe(f"llama-cpp-python {llama_cpp.__version__}")


# ---- HTTP measurements -------------------------------------------------------------------------


async def one_completion(client: httpx.AsyncClient, model: str, max_tokens: int, bias: dict | None) -> tuple[int, float]:
    """(completion tokens, time to first token) for one streamed completion."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True, "temperature": 1.0,
            "stream_options": {"include_usage": True}}
    if bias:
        body["logit_bias"] = bias
    start = time.perf_counter()
    first = None
    chunks = usage_tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                usage_tokens = data["usage"]["completion_tokens"]
            if data.get("choices") and data["choices"][0].get("text"):
                chunks += 1  # one token per chunk where a server sends no usage
                if first is None:
                    first = time.perf_counter() - start
    tokens = usage_tokens or chunks
    return tokens, first or 0.0


async def decode_once(base: str, model: str, concurrency: int, max_tokens: int,
                      bias: dict | None) -> tuple[float, list[float]]:
    """(aggregate tokens/s, each request's time to first token in s) for `concurrency` requests."""
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*[one_completion(client, model, max_tokens, bias) for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    return sum(t for t, _ in results) / elapsed, [f for _, f in results]


async def request_rate(base: str, model: str, concurrency: int, total: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        (await client.post("/v1/chat/completions", json=body)).raise_for_status()
        queue = list(range(total))

        async def worker():
            while queue:
                queue.pop()
                (await client.post("/v1/chat/completions", json=body)).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return total / (time.perf_counter() - start)


def wait_ready(base: str, proc: subprocess.Popen, path: str = "/v1/models", timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def modelyard_server(model_file: Path, tiny_file: Path, threads: int):
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.yaml"
        registry.write_text(json.dumps({"models": [
            {"id": "bench", "backend": "gguf", "path": str(model_file), "keep_alive": -1,
             "options": {"n_ctx": 2048, "n_threads": threads}},  # n_parallel 4, the default
            {"id": "bench-serial", "backend": "gguf", "path": str(model_file), "keep_alive": -1,
             "options": {"n_ctx": 2048, "n_threads": threads, "n_parallel": 1}},
            {"id": "tiny", "backend": "gguf", "path": str(tiny_file), "keep_alive": -1,
             "options": {"n_ctx": 512, "n_threads": threads}},
        ]}))
        env = {**os.environ, "MODELYARD_MODEL_DIRS": f"{model_file.parent},{tiny_file.parent}"}
        proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(port), "--models",
                                 str(registry)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, proc)
            yield base
        finally:
            stop(proc)


@contextlib.contextmanager
def peer_server(path: Path, name: str, n_ctx: int, threads: int):
    """llama-cpp-python's server; interrupt_requests off, or a new request cuts the running stream."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias",
                             name, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                             "--n_threads_batch", str(threads), "--verbose", "False",
                             "--interrupt_requests", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        yield base
    finally:
        stop(proc)


class LlamaInProcess:
    """llama-cpp-python's create_completion called directly (no HTTP, no worker)."""

    def __init__(self, model_file: Path, threads: int):
        import llama_cpp

        self.llama = llama_cpp.Llama(str(model_file), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                                     verbose=False)
        self.run(4)

    def run(self, max_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        first = None
        tokens = 0
        # No logits processor (llama-cpp-python runs Python ones per token); EOS is rare in a
        # 32000-token random vocabulary, and the rate counts the tokens actually produced.
        for _chunk in self.llama.create_completion(PROMPT, max_tokens=max_tokens, stream=True, temperature=1.0):
            tokens += 1
            if first is None:
                first = time.perf_counter() - start
        return tokens / (time.perf_counter() - start), first or 0.0

    def close(self) -> None:
        self.llama.close()


class AdapterInProcess:
    """modelyard's own GGUF adapter called directly: the engine work without the HTTP and worker hop."""

    def __init__(self, model_file: Path, threads: int):
        from backends.gguf.adapter import GgufAdapter
        from backends.gguf.spec import GgufOptions, GgufSpec
        from backends.plan import Device

        spec = GgufSpec(id="bench", backend="gguf", path=model_file, options=GgufOptions(n_ctx=2048, n_threads=threads))
        self.adapter = GgufAdapter(spec.resolve(Device()))
        self.run(4)

    def run(self, max_tokens: int) -> tuple[float, float]:
        from backends.contract import Cancel, CompletionParams

        start = time.perf_counter()
        first = None
        bias = {k: float(v) for k, v in NO_EOS.items()}
        chunks = self.adapter.complete(CompletionParams(prompt=PROMPT, max_tokens=max_tokens, logit_bias=bias),
                                       Cancel())
        try:
            while True:
                next(chunks)
                if first is None:
                    first = time.perf_counter() - start
        except StopIteration as done:
            tokens = done.value["usage"]["completion_tokens"]
        return tokens / (time.perf_counter() - start), first or 0.0

    def close(self) -> None:
        self.adapter.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    model_file = build_bench_model()
    tiny.build(DEFAULT_ROOT)
    tiny_file = DEFAULT_ROOT / tiny.CHAT_FILE
    print(f"machine: {machine()}")
    print(f"model: {model_file.name} ({model_file.stat().st_size / 2**20:.0f} MiB); tiny: {tiny_file.name}; "
          f"max_tokens {args.max_tokens}, {args.repeats} repeats, medians, n_threads {args.threads}")
    # Every contender is up at once and measured in turn, repeat by repeat, so load from anything
    # else on the machine falls on all of them alike.
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    with modelyard_server(model_file, tiny_file, args.threads) as ours:
        with peer_server(model_file, "bench", 2048, args.threads) as peer:
            servers = {"modelyard": (ours, "bench"), "modelyard n_parallel=1": (ours, "bench-serial"),
                       "llama_cpp.server": (peer, "bench")}
            for base, model in servers.values():
                asyncio.run(decode_once(base, model, 1, 4, NO_EOS))  # load and warm
            in_process = {"llama-cpp-python in-process": LlamaInProcess(model_file, args.threads),
                          "our adapter in-process": AdapterInProcess(model_file, args.threads)}
            for _ in range(args.repeats):
                for c in (1, 4):
                    for name, (base, model) in servers.items():
                        rate, firsts = asyncio.run(decode_once(base, model, c, args.max_tokens, NO_EOS))
                        samples[name, f"decode tok/s c={c}"].append(rate)
                        samples[name, f"TTFT ms c={c}"].extend(f * 1000 for f in firsts)
                for name, engine in in_process.items():
                    rate, first = engine.run(args.max_tokens)
                    samples[name, "decode tok/s c=1"].append(rate)
                    samples[name, "TTFT ms c=1"].append(first * 1000)
            for engine in in_process.values():
                engine.close()
        with peer_server(tiny_file, "tiny", 512, args.threads) as peer:
            servers = {"modelyard": ours, "llama_cpp.server": peer}
            for _ in range(args.repeats):
                for c in (1, 4):
                    for name, base in servers.items():
                        samples[name, f"tiny req/s c={c}"].append(
                            asyncio.run(request_rate(base, "tiny", c, args.requests)))
    columns = ["modelyard", "modelyard n_parallel=1", "llama_cpp.server", "llama-cpp-python in-process",
               "our adapter in-process"]
    rows = sorted({metric for _, metric in samples}, key=lambda k: (k.split()[0], k))
    print(f"\n| metric | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for row in rows:
        cells = [f"{statistics.median(samples[c, row]):.1f}" if samples.get((c, row)) else "-" for c in columns]
        print(f"| {row} | {' | '.join(cells)} |")
    ours_c1 = statistics.median(samples["modelyard", "decode tok/s c=1"])
    for name in columns[3:]:
        inproc = statistics.median(samples[name, "decode tok/s c=1"])
        print(f"modelyard over HTTP at c=1 vs {name}: {100 * (ours_c1 / inproc - 1):+.1f}% decode speed")


if __name__ == "__main__":
    main()
