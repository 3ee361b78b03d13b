"""Warm-tier benchmark: cold load from disk against swap-in from RAM, per engine family.

For a random-weight model of at least 300 MB of each family (a llama GGUF, a transformers Llama, a
Stable Diffusion pipeline with a large UNet, a CTranslate2 Whisper), built once into
~/.cache/modelyard/bench, each round: evict the model's files from the page cache
(posix_fadvise DONTNEED), start a worker through the real WorkerFactory and time it until ready
(cold); park it through the real WarmStore (timed) and stop it; start a worker from the parked copy
and time it (RAM). Medians of the rounds, with the machine. Times are what a request waits for a
worker: process start, imports and the engine's load together; the `floor` column is the same start
for the engine's tiny demo model, the part no warm tier can remove (the rest is the weights').

    .venv/bin/python bench/bench_warm.py [--rounds 3] [--device cpu|cuda] [--engines gguf,hf,diffusers,whisper]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.plan import MIB, Device  # noqa: E402
from bench.machine import describe  # noqa: E402
from server.registry import parse_spec  # noqa: E402
from server.warm import WarmStore  # noqa: E402
from server.worker_client import WorkerFactory  # noqa: E402

BENCH = Path("~/.cache/modelyard/bench").expanduser()


def build_models() -> dict[str, dict]:
    """The models.yaml entries of the four benchmark models, building any that is missing."""
    import numpy as np

    from tinymodels import gguf, hf, media

    BENCH.mkdir(parents=True, exist_ok=True)
    gguf.build_file(BENCH / "warm-llama-1024x12-f16.gguf", vocab=32000, dim=1024, layers=12, heads=16, ffn=2816,
                    context=4096, dtype=np.float16, seed=3)
    hf._atomic(BENCH / "warm-hf-llama", lambda out: hf._build_llm(out, hidden=1536, layers=8, heads=16))
    media._atomic(BENCH / "warm-sd", lambda out: media.build_sd(out, unet_channels=(512, 1024), norm_groups=32))
    media._atomic(BENCH / "warm-whisper", lambda out: media.build_whisper(out, d_model=1024, layers=4, heads=16))
    return {
        "gguf": {"id": "gguf", "backend": "gguf", "path": str(BENCH / "warm-llama-1024x12-f16.gguf"),
                 "options": {"n_ctx": 2048}},
        "hf": {"id": "hf", "backend": "hf", "path": str(BENCH / "warm-hf-llama")},
        "diffusers": {"id": "diffusers", "backend": "diffusers", "path": str(BENCH / "warm-sd")},
        "whisper": {"id": "whisper", "backend": "faster-whisper", "path": str(BENCH / "warm-whisper")},
    }


TINY = {"gguf": "tiny-llama.gguf", "hf": "tiny-hf", "diffusers": "tiny-sd", "whisper": "tiny-whisper"}


def files_of(spec) -> list[Path]:
    found: list[Path] = []
    for path in spec.files():
        found += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return found


def evict_from_page_cache(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


async def start_s(factory: WorkerFactory, plan) -> float:
    began = time.perf_counter()
    worker = await factory.start(plan)
    seconds = time.perf_counter() - began
    await worker.stop()
    return seconds


async def measure(name: str, entry: dict, device: Device, rounds: int, store: WarmStore) -> dict:
    from tinymodels import DEFAULT_ROOT, build_all

    spec = parse_spec(entry)
    plan = spec.resolve(device)
    factory = WorkerFactory()
    build_all()
    tiny = parse_spec({**entry, "path": str(DEFAULT_ROOT / TINY[name])}).resolve(device)
    floor = [await start_s(factory, tiny) for _ in range(rounds)]
    cold: list[float] = []
    ram: list[float] = []
    park: list[float] = []
    copy = None
    for _ in range(rounds):
        evict_from_page_cache(files_of(spec))
        began = time.perf_counter()
        worker = await factory.start(plan)
        cold.append(time.perf_counter() - began)
        began = time.perf_counter()
        copy = await store.park(spec.id, plan, worker, ())
        park.append(time.perf_counter() - began)
        await worker.stop()
        began = time.perf_counter()
        resumed = await factory.start(copy.plan)
        ram.append(time.perf_counter() - began)
        await resumed.stop()
        store.drop(copy)
    return {"engine": entry["backend"], "disk_mb": sum(f.stat().st_size for f in files_of(spec)) / MIB,
            "warm_mb": copy.bytes / MIB, "form": copy.form + (" (mlocked)" if copy.locked else ""),
            "cold": statistics.median(cold), "ram": statistics.median(ram), "park": statistics.median(park),
            "floor": statistics.median(floor), "rounds": rounds}


async def main_async(args: argparse.Namespace) -> None:
    entries = build_models()
    device = Device(kind=args.device, runtime_mb=0)
    store = WarmStore()
    try:
        rows = [await measure(name, entries[name], device, args.rounds, store) for name in args.engines.split(",")]
    finally:
        store.close()
    print(f"{'engine':16} {'on disk':>9} {'warm copy':>10} {'form':22} {'cold (disk)':>12} {'from RAM':>9} "
          f"{'park':>7} {'floor':>7}  {'above the floor: disk vs RAM':>28}")
    for r in rows:
        above_cold, above_ram = r["cold"] - r["floor"], r["ram"] - r["floor"]
        print(f"{r['engine']:16} {r['disk_mb']:7.0f} MB {r['warm_mb']:7.0f} MB {r['form']:22} {r['cold']:10.2f} s "
              f"{r['ram']:7.2f} s {r['park']:5.2f} s {r['floor']:5.2f} s  {above_cold:10.2f} s vs {above_ram:.2f} s")
    print(f"medians of {args.rounds} rounds; cold = page cache evicted first; each time is worker start to ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--engines", default="gguf,hf,diffusers,whisper")
    args = parser.parse_args()
    print(f"machine: {describe()}; device {args.device}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
