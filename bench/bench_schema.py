"""JSON-schema decoding benchmark on GGUF: tokens/s with and without a response schema.

Runs `modelyard serve` on the benchmark GGUF (vocab 32000, bench_gguf.py builds it) and streams
chat completions of --max-tokens tokens (end tokens banned, so every run is the same length):
free text, then a schema whose one string is unbounded, then the same with maxLength 5000 (which
crashed the GBNF grammar). --baseline ROOT serves the same model from another checkout (e.g. one
from before llguidance drove llama.cpp's sampling) at the same time; runs alternate between the two,
so both see the same machine load. Medians of --repeats runs.

    .venv/bin/python bench/bench_schema.py [--repeats 3] [--max-tokens 128] [--baseline /path/to/checkout]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from bench.bench_gguf import NO_EOS, build_bench_model, free_port, machine, wait_ready  # noqa: E402

CASES = {
    "free text": None,
    "schema: string": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "schema: maxLength 5000": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 5000}},
                               "required": ["text"]},
}


@contextlib.contextmanager
def server(root: Path, model: Path):
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [
            {"id": "bench", "backend": "gguf", "path": str(model), "options": {"n_ctx": 2048, "n_parallel": 1}}]}))
        port = free_port()
        env = {**os.environ, "MODELYARD_MODELS": str(registry), "MODELYARD_PORT": str(port),
               "MODELYARD_LOG_LEVEL": "warning", "MODELYARD_MODEL_DIRS": str(model.parent),
               "PYTHONPATH": str(root)}
        process = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=root, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process)
            yield base
        finally:
            process.terminate()
            process.wait(30)


def tokens_per_second(base: str, schema: dict | None, max_tokens: int) -> float | str:
    body = {"model": "bench", "messages": [{"role": "user", "content": "Describe the sea."}], "max_tokens": max_tokens,
            "stream": True, "logit_bias": NO_EOS, "stream_options": {"include_usage": True}, "seed": 1}
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    first = end = None
    tokens = 0
    try:
        with httpx.Client(base_url=base, timeout=600) as client, \
                client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code}"
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return data["error"]["code"] or "error"
                if data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
                elif first is None and data.get("choices") and data["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
                end = time.perf_counter()
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if first is None or end is None or tokens < 2:
        return "no tokens"
    return (tokens - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--baseline", type=Path, help="another checkout to run the same cases on")
    args = parser.parse_args()
    model = build_bench_model()
    trees = {"this tree": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    runs: dict[tuple[str, str], list[float | str]] = {(case, label): [] for case in CASES for label in trees}
    with contextlib.ExitStack() as stack:
        bases = {label: stack.enter_context(server(root, model)) for label, root in trees.items()}
        for base in bases.values():
            tokens_per_second(base, None, 8)  # load the model outside the timing
        for _ in range(args.repeats):  # interleaved, so both trees see the same machine load
            for case, schema in CASES.items():
                for label, base in bases.items():
                    runs[case, label].append(tokens_per_second(base, schema, args.max_tokens))
    results: dict[str, dict[str, str]] = {case: {} for case in CASES}
    for (case, label), values in runs.items():
        numbers = [v for v in values if isinstance(v, float)]
        results[case][label] = f"{statistics.median(numbers):8.1f} tok/s" if len(numbers) == len(values) \
            else f"{next(v for v in values if not isinstance(v, float)):>14}"
    print(f"decode tokens/s, {args.max_tokens} tokens, median of {args.repeats}; {machine()}")
    print(f"{'':26}" + "".join(f"{label:>18}" for label in trees))
    for case, row in results.items():
        print(f"{case:26}" + "".join(f"{row[label]:>18}" for label in trees))


if __name__ == "__main__":
    main()
