"""Spine benchmark: the HTTP + arbiter + worker path with the fake engine (zero latency).

Prints chat requests/s at concurrency 1 and 8 (max_tokens 16), streamed chunks/s and time to first
token, and the per-chunk cost of the worker hop (a chunk produced in the worker process and read in
the server process, against the same generator iterated in-process). Medians of repeated rounds.

    .venv/bin/python bench/bench_spine.py [--rounds 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.contract import Cancel, ChatParams  # noqa: E402
from backends.fake.adapter import FakeAdapter  # noqa: E402
from backends.fake.spec import FakeOptions, FakeSpec  # noqa: E402
from backends.plan import Device  # noqa: E402
from bench.machine import describe  # noqa: E402
from server.worker_client import WorkerFactory  # noqa: E402

BODY = {"model": "bench", "messages": [{"role": "user", "content": "benchmark me"}], "max_tokens": 16}


def machine() -> str:
    return describe()


def start_server(port: int, registry: Path) -> subprocess.Popen:
    env = {**os.environ, "MODELYARD_MODELS": str(registry), "MODELYARD_PORT": str(port),
           "MODELYARD_LOG_LEVEL": "warning", "MODELYARD_MAX_QUEUE": "1000"}
    process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not start")


async def requests_per_second(base: str, concurrency: int, total: int) -> float:
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await client.post("/v1/chat/completions", json=BODY)  # load the model outside the timing
        queue = list(range(total))

        async def one_client():
            while queue:
                queue.pop()
                response = await client.post("/v1/chat/completions", json=BODY)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def stream_figures(base: str, tokens: int) -> tuple[float, float]:
    """(chunks per second over the stream, seconds to the first content chunk)."""
    body = {**BODY, "max_tokens": tokens, "stream": True}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        started = time.perf_counter()
        first = None
        chunks = 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
        elapsed = time.perf_counter() - started
    return chunks / elapsed, first or elapsed


def in_process_chunk_seconds(tokens: int) -> float:
    adapter = FakeAdapter(FakeSpec(id="bench", backend="fake", options=FakeOptions(memory_mb=1)).resolve(Device()))
    started = time.perf_counter()
    count = sum(1 for _ in adapter.chat(ChatParams(messages=BODY["messages"], max_tokens=tokens), Cancel()))
    return (time.perf_counter() - started) / count


async def worker_chunk_seconds(tokens: int) -> float:
    worker = await WorkerFactory().start(FakeSpec(id="bench", backend="fake").resolve(Device()))
    try:
        call = await worker.call(ChatParams(messages=BODY["messages"], max_tokens=100))
        await call.result()  # warm up
        started = time.perf_counter()
        call = await worker.call(ChatParams(messages=BODY["messages"], max_tokens=tokens))
        chunks, _ = await call.result()
        return (time.perf_counter() - started) / len(chunks)
    finally:
        await worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--port", type=int, default=18431)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [
            {"id": "bench", "backend": "fake", "keep_alive": -1, "options": {"memory_mb": 64}}]}))
        server = start_server(args.port, registry)
        base = f"http://127.0.0.1:{args.port}"
        try:
            rps1 = [asyncio.run(requests_per_second(base, 1, args.requests)) for _ in range(args.rounds)]
            rps8 = [asyncio.run(requests_per_second(base, 8, args.requests)) for _ in range(args.rounds)]
            streams = [asyncio.run(stream_figures(base, 512)) for _ in range(args.rounds)]
            ttfts = [asyncio.run(stream_figures(base, 16))[1] for _ in range(args.rounds * 4)]
        finally:
            server.terminate()
            server.wait(30)
    local = [in_process_chunk_seconds(20000) for _ in range(args.rounds)]
    hop = [asyncio.run(worker_chunk_seconds(20000)) for _ in range(args.rounds)]
    med = statistics.median
    print(f"machine: {machine()}")
    print(f"rounds: {args.rounds} (medians), {args.requests} requests per round, fake engine, zero latency")
    print(f"chat requests/s, max_tokens 16, c=1: {med(rps1):8.1f}")
    print(f"chat requests/s, max_tokens 16, c=8: {med(rps8):8.1f}")
    print(f"streamed chunks/s (one 512-token stream):  {med(s[0] for s in streams):8.0f}")
    print(f"time to first token (16-token stream):     {med(ttfts) * 1000:8.2f} ms")
    print(f"per chunk in-process (adapter only):       {med(local) * 1e6:8.2f} us")
    print(f"per chunk through the worker hop:          {med(hop) * 1e6:8.2f} us")
    print(f"worker hop cost per chunk:                 {(med(hop) - med(local)) * 1e6:8.2f} us")


if __name__ == "__main__":
    main()
