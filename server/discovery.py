"""Models the user already has on disk: the Hugging Face cache, Ollama's store and LM Studio's models
folder. Entries made from them point at the files where they are; nothing is copied.

- Hugging Face: huggingface_hub's cache scan (HF_HUB_CACHE / HF_HOME honoured), one snapshot per repo.
- Ollama: `$OLLAMA_MODELS` or ~/.ollama/models; each manifest (manifests/HOST/NAMESPACE/MODEL/TAG) names
  its layers, and the `application/vnd.ollama.image.model` layer is a GGUF blob (blobs/sha256-HEX).
- LM Studio: ~/.lmstudio/models and the older ~/.cache/lm-studio/models (PUBLISHER/REPO/FILE.gguf).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from server.formats import Detected, FormatError, detect, is_projector

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
OLLAMA_LIBRARY = ("registry.ollama.ai", "library")


@dataclass(frozen=True)
class Found:
    """One model found in a store: servable (`detected`) or not (`problem` says why)."""

    source: str  # "huggingface", "ollama", "lmstudio"
    name: str  # how the store names it; `models --discover --add NAME` takes this
    path: Path
    size_bytes: int
    detected: Detected | None = None
    problem: str | None = None


def hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def ollama_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


def lmstudio_dirs() -> list[Path]:
    return [Path("~/.lmstudio/models").expanduser(), Path("~/.cache/lm-studio/models").expanduser()]


def store_roots() -> list[Path]:
    """Where pulled and discovered models live: admitted by the registry's path check by default."""
    return [hf_cache(), ollama_dir(), *lmstudio_dirs()]


def discover() -> list[Found]:
    return [*from_hf_cache(hf_cache()), *from_ollama(ollama_dir()),
            *(found for root in lmstudio_dirs() for found in from_lmstudio(root))]


def _found(source: str, name: str, path: Path) -> Found:
    size = _size(path)
    try:
        return Found(source, name, path, size, detected=detect(path))
    except FormatError as exc:
        return Found(source, name, path, size, problem=str(exc))


def from_hf_cache(root: Path) -> Iterator[Found]:
    if not root.is_dir():
        return
    from huggingface_hub import scan_cache_dir

    for repo in sorted(scan_cache_dir(root).repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified))
        snapshot = Path(revision.snapshot_path)
        ggufs = [p for p in sorted(snapshot.rglob("*.gguf")) if not is_projector(p)]
        if ggufs:
            for gguf in ggufs:
                yield _found("huggingface", f"{repo.repo_id}/{gguf.relative_to(snapshot)}", gguf)
        else:
            yield _found("huggingface", repo.repo_id, snapshot)


def from_ollama(root: Path) -> Iterator[Found]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = manifest.relative_to(manifests).parts
        if len(parts) != 4:
            continue
        host, namespace, model, tag = parts
        name = f"{model}:{tag}" if (host, namespace) == OLLAMA_LIBRARY else (
            f"{namespace}/{model}:{tag}" if host == OLLAMA_LIBRARY[0] else f"{host}/{namespace}/{model}:{tag}")
        try:
            layers = json.loads(manifest.read_text()).get("layers") or []
        except (OSError, ValueError):
            continue
        blob = next((_blob(root, layer) for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_LAYER), None)
        if blob is None:
            continue
        if not blob.is_file():
            yield Found("ollama", name, blob, 0, problem=f"its model blob {blob.name} is missing")
            continue
        yield _found("ollama", name, blob)


def _blob(root: Path, layer: dict) -> Path:
    return root / "blobs" / str(layer.get("digest", "")).replace(":", "-")


def from_lmstudio(root: Path) -> Iterator[Found]:
    if not root.is_dir():
        return
    for gguf in sorted(root.glob("*/*/*.gguf")):
        if not is_projector(gguf):
            yield _found("lmstudio", str(gguf.relative_to(root)), gguf)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
