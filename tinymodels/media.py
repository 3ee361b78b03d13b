"""Tiny image and speech models: a Stable Diffusion pipeline and a Whisper model."""

from pathlib import Path


def build(root: Path) -> None:
    """Filled in by the images-and-speech work (issue 4)."""
