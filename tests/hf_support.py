"""Shared by the Hugging Face text tests: the formats, the demo models, a directly driven worker."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from backends.contract import PARAMS, Method
from server.memory import MemoryProbe, detect_device
from server.registry import parse_spec
from server.worker_client import WorkerFactory
from tinymodels import DEFAULT_ROOT
from tinymodels import hf as tiny_hf

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # gptqmodel's thread pools fail on 2 cores without it

FORMATS = {
    "fp16": ("tiny-hf", {}),  # float32 on a CPU, fp16 on a GPU (dtype: auto)
    "bnb4": ("tiny-hf", {"quantization": "4bit", "bnb_4bit_quant_type": "nf4", "double_quant": True}),
    "bnb8": ("tiny-hf", {"quantization": "8bit"}),
    "gptq": ("tiny-gptq", {}),
}
HELLO = [{"role": "user", "content": "hello there"}]


def build_demo_models() -> Path:
    tiny_hf.build(DEFAULT_ROOT)  # cached: builds only what is missing
    return DEFAULT_ROOT


def hf_entry(root: Path, fmt: str, **options) -> dict:
    directory, base = FORMATS[fmt]
    return {"id": f"hf-{fmt}", "backend": "hf", "path": str(root / directory), "options": {**base, **options}}


class DirectWorker:
    """A real worker process driven from a private event loop, without the HTTP app."""

    def __init__(self, entry: dict):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.spec = parse_spec(entry)
        self.plan = self.spec.resolve(detect_device(MemoryProbe(), 0))
        self.worker = self.run(WorkerFactory().start(self.plan))

    def run(self, coroutine, timeout: float = 180):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, method: str, **params) -> tuple[list[dict], dict]:
        async def go():
            return await (await self.worker.call(PARAMS[Method(method)](**params))).result()

        return self.run(go())

    def text(self, method: str, **params) -> tuple[str, list[dict], dict]:
        chunks, final = self.call(method, **params)
        logprobs = [entry for chunk in chunks for entry in chunk.get("logprobs", [])]
        return "".join(c["text"] for c in chunks), logprobs, final

    def close(self) -> None:
        self.run(self.worker.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
