"""Tiny hf demo models (issue 3)."""

from pathlib import Path


def build(root: Path) -> None:
    """Builds nothing yet: the text-generation work fills this in."""
