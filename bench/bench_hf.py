"""Transformers decode benchmark: our decode loop against `model.generate` on the demo HF models.

For each demo format (fp32 on a CPU / fp16 on a GPU, bitsandbytes 4- and 8-bit, GPTQ) and the same
prompt, greedy, exactly --tokens new tokens (end-of-sequence banned), tokens per second (prefill
included, medians of --rounds):

- generate:  `model.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)` in this process
- loop/<kind>: backends/hf/adapter.py's loop in this process, per decode path (dynamic, static; on a GPU
  also cuda-graphs), the same model object the worker would build
- served:    the same model behind `modelyard serve`, streamed over HTTP (request to last token)

    .venv/bin/python bench/bench_hf.py [--rounds 5] [--tokens 64] [--formats fp16,bnb4,bnb8,gptq]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

from backends.contract import Cancel, ChatParams  # noqa: E402
from bench.bench_spine import start_server  # noqa: E402
from bench.machine import describe  # noqa: E402
from server.memory import MemoryProbe, detect_device  # noqa: E402
from server.registry import parse_spec  # noqa: E402
from tinymodels import DEFAULT_ROOT  # noqa: E402
from tinymodels import hf as tiny_hf  # noqa: E402

FORMATS = {"fp16": ("tiny-hf", {}), "bnb4": ("tiny-hf", {"quantization": "4bit", "double_quant": True}),
           "bnb8": ("tiny-hf", {"quantization": "8bit"}), "gptq": ("tiny-gptq", {})}
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
EOS_BAN = {"2": -100.0}  # </s> in the demo tokenizer


def entry(fmt: str, **options) -> dict:
    directory, base = FORMATS[fmt]
    return {"id": fmt, "backend": "hf", "path": str(DEFAULT_ROOT / directory), "options": {**base, **options}}


def median_rate(run, tokens: int, rounds: int) -> float:
    return median_rates({"run": run}, tokens, rounds)["run"]


def median_rates(runs: dict, tokens: int, rounds: int) -> dict[str, float]:
    """Tokens/s of each run, rounds interleaved (a busy machine slows every contender alike), medians."""
    for run in runs.values():
        run()  # warm up: first-call allocations, kernel selection, graph capture
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            produced = run()
            assert produced == tokens, f"{name}: expected {tokens} tokens, got {produced}"
            times[name].append(time.perf_counter() - started)
    return {name: tokens / statistics.median(seconds) for name, seconds in times.items()}


def in_process(model: dict, tokens: int, rounds: int, kinds: list[str]) -> dict[str, float]:
    """generate and our loop (per decode path) on one models.yaml entry, in this process."""
    import torch

    from backends.hf.adapter import HfTextAdapter
    from backends.hf.decode import make_decoder

    device = detect_device(MemoryProbe(), 0)
    adapter = HfTextAdapter(parse_spec(model).resolve(device))
    prompt = adapter.tokenizer(adapter.render(MESSAGES), add_special_tokens=False, return_tensors="pt").input_ids
    prompt = prompt.to(adapter.model.device)
    eos = sorted(adapter.eos_ids)

    def generate() -> int:
        with torch.inference_mode():
            out = adapter.model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                         pad_token_id=eos[0] if eos else None)
        return int(out.shape[1] - prompt.shape[1])

    decoders = {kind: make_decoder(kind, torch, adapter.model, adapter._cache_arg, adapter._keep_arg,
                                   adapter.context) for kind in kinds}

    def loop(kind: str) -> int:
        adapter.decoder = decoders[kind]
        params = ChatParams(messages=MESSAGES, max_tokens=tokens, temperature=0.0, logit_bias=EOS_BAN)
        chunks = adapter.chat(params, Cancel())
        try:
            while True:
                next(chunks)
        except StopIteration as done:
            return done.value["usage"]["completion_tokens"]

    runs = {"generate": generate, **{f"loop/{kind}": (lambda kind=kind: loop(kind)) for kind in kinds}}
    rates = median_rates(runs, tokens, rounds)
    adapter.close()
    return rates


def streamed_tokens(port: int, model: str, tokens: int) -> int:
    """One streamed greedy chat of `tokens` tokens from the server on `port`; the tokens its usage counts."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0,
            "logit_bias": EOS_BAN, "stream": True, "stream_options": {"include_usage": True}}
    usage = 0
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"usage":{' in line:
                usage = json.loads(line[6:])["usage"]["completion_tokens"]
    return usage


def served(formats: list[str], tokens: int, rounds: int, port: int) -> dict[str, float]:
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [{**entry(f), "keep_alive": -1} for f in formats]}))
        os.environ["MODELYARD_MODEL_DIRS"] = f"{tmp},{DEFAULT_ROOT}"
        os.environ["MODELYARD_BUDGET_MB"] = "16384"
        process = start_server(port, registry)
        try:
            for fmt in formats:
                rates[fmt] = median_rate(lambda fmt=fmt: streamed_tokens(port, fmt, tokens), tokens, rounds)
        finally:
            process.terminate()
            process.wait(60)
    return rates


def served_against_generate(formats: list[str], tokens: int, rounds: int, port: int = 18433,
                            streams: int = 4) -> dict[str, dict[str, float]]:
    """Per format, tokens/s (medians, rounds alternating): `generate` in this process, the same model
    served (one stream, request to last token), and `streams` concurrent streams (aggregate over the
    wall time; the HF scheduler decodes them as rows of one batch)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from backends.hf.adapter import HfTextAdapter

    device = detect_device(MemoryProbe(), 0)
    runs: dict[str, dict] = {}
    adapters = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [{**entry(f, n_parallel=streams), "keep_alive": -1}
                                                       for f in formats]}))
        os.environ["MODELYARD_MODEL_DIRS"] = f"{tmp},{DEFAULT_ROOT}"
        os.environ["MODELYARD_BUDGET_MB"] = "16384"
        process = start_server(port, registry)
        pool = ThreadPoolExecutor(streams)
        try:
            for fmt in formats:
                adapter = HfTextAdapter(parse_spec(entry(fmt)).resolve(device))
                adapters.append(adapter)
                prompt = adapter.tokenizer(adapter.render(MESSAGES), add_special_tokens=False,
                                           return_tensors="pt").input_ids.to(adapter.model.device)
                eos = sorted(adapter.eos_ids)

                def generate(adapter=adapter, prompt=prompt, eos=eos) -> int:
                    with torch.inference_mode():
                        out = adapter.model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens,
                                                     do_sample=False, pad_token_id=eos[0] if eos else None)
                    return int(out.shape[1] - prompt.shape[1])

                def request(fmt=fmt) -> int:
                    return streamed_tokens(port, fmt, tokens)

                def several(request=request) -> int:
                    return sum(pool.map(lambda _: request(), range(streams))) // streams

                runs[fmt] = {"generate in-process": generate, "modelyard served c=1": request,
                             f"modelyard served c={streams} (aggregate)": several}
            rates = {fmt: median_rates(by_kind, tokens, rounds) for fmt, by_kind in runs.items()}
        finally:
            pool.shutdown()
            for adapter in adapters:
                adapter.close()
            process.terminate()
            process.wait(60)
    for by_kind in rates.values():  # `several` counted one stream's tokens over the wall time of all
        by_kind[f"modelyard served c={streams} (aggregate)"] *= streams
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--port", type=int, default=18432)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads here and in the server's workers (OMP_NUM_THREADS); default: torch's. "
                             "On a busy 2-core machine 2 threads spin against each other: 1 is steadier")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported, here and in workers
    formats = args.formats.split(",")
    tiny_hf.build(DEFAULT_ROOT)
    device = detect_device(MemoryProbe(), 0)
    kinds = ["dynamic", "static"] + (["cuda-graphs"] if device.kind == "cuda" else [])
    table = {fmt: in_process(entry(fmt), args.tokens, args.rounds, kinds) for fmt in formats}
    for fmt, rate in served(formats, args.tokens, args.rounds, args.port).items():
        table[fmt]["served"] = rate
    columns = ["generate", *[f"loop/{k}" for k in kinds], "served"]
    import torch

    print(f"\nHF decode, {args.tokens} new tokens, greedy, tokens/s (median of {args.rounds}, rounds interleaved), "
          f"on {device.kind}, {torch.get_num_threads()} torch threads")
    print(f"machine: {describe()}")
    print(f"{'model':8}" + "".join(f"{c:>18}" for c in columns) + f"{'loop/generate':>16}")
    for fmt, rates in table.items():
        best_loop = max(rates[f"loop/{k}"] for k in kinds)
        print(f"{fmt:8}" + "".join(f"{rates[c]:18.1f}" for c in columns) + f"{best_loop / rates['generate']:15.2f}x")


if __name__ == "__main__":
    main()
