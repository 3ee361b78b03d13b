"""Tiny text models: GGUF, HF fp16, bitsandbytes (loads the fp16 one), GPTQ, embeddings."""

from pathlib import Path


def build(root: Path) -> None:
    """Filled in by the text-generation work (issue 3)."""
