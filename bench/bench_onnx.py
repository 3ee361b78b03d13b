"""Embeddings per second for one model served by the Hugging Face engine and by ONNX Runtime (float and
int8 graphs), side by side in one run: a random BERT of all-MiniLM-L6-v2's shape (384 wide, 6
layers), exported here, behind one modelyard server, requests of 16 short texts, rounds alternating
between the engines. Medians; the machine is printed.

    .venv/bin/python bench/bench_onnx.py [--rounds 5] [--requests 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_media import start_server  # noqa: E402
from bench.machine import describe  # noqa: E402
from tinymodels import DEFAULT_ROOT  # noqa: E402
from tinymodels import hf as tiny_hf  # noqa: E402
from tinymodels import onnx as tiny_onnx  # noqa: E402

TEXTS = [f"sentence number {i} about memory budgets, local models and careful arbiters" for i in range(16)]


def build_minilm(directory: Path) -> tuple[Path, Path]:
    """A random BertModel of MiniLM-L6's shape, as a Hugging Face directory and an ONNX export."""
    import torch
    from transformers import BertConfig, BertModel

    hf_dir, onnx_dir = directory / "minilm-hf", directory / "minilm-onnx"
    torch.manual_seed(0)
    tokenizer = tiny_hf._wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)
    tiny_onnx._export(hf_dir, onnx_dir, quantize=True)
    return hf_dir, onnx_dir


def per_second(http: httpx.Client, model: str, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        http.post("/v1/embeddings", json={"model": model, "input": TEXTS}).raise_for_status()
    return requests * len(TEXTS) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--port", type=int, default=8393)
    args = parser.parse_args()
    tiny_onnx.build(DEFAULT_ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, onnx_dir = build_minilm(Path(tmp))
        import yaml

        models = {"hf": {"backend": "hf", "path": str(hf_dir)},
                  "onnx": {"backend": "onnx", "path": str(onnx_dir)},
                  "onnx-int8": {"backend": "onnx", "path": str(onnx_dir), "options": {"file": "model_quantized.onnx"}}}
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [{"id": name, **entry} for name, entry in models.items()]}))
        server = start_server(args.port, registry)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=600) as http:
                for name in models:
                    per_second(http, name, 2)  # load and warm up
                rates: dict[str, list[float]] = {name: [] for name in models}
                for _ in range(args.rounds):
                    for name in models:
                        rates[name].append(per_second(http, name, args.requests))
        finally:
            server.terminate()
            server.wait(30)
    print(f"machine: {describe()}")
    print(f"random BERT, all-MiniLM-L6-v2 shape; {args.requests} requests of {len(TEXTS)} texts per round, "
          f"{args.rounds} rounds alternating; medians")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"  {name:10} {value:8.1f} embeddings/s  ({value / medians['hf']:.2f}x the HF engine)")


if __name__ == "__main__":
    main()
