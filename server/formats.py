"""What a model on disk is: its format, the engine that serves it and the models.yaml entry for it.

`modelyard add`, `pull` and `models --discover` all ask this one module. It reads headers and
config files only (no engine import), so it runs in the CLI process, on a real download or on a
header-only stand-in of a remote repository (server/hub.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.gguf.file import GgufFile, GgufFileError

# Encoders with these GGUF architectures only embed.
_GGUF_EMBEDDERS = ("bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder", "modern-bert",
                   "neo-bert", "gemma-embedding")
_CAUSAL = ("ForCausalLM", "LMHeadModel")
_PICKLE = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class FormatError(ValueError):
    """The path is not a model modelyard can serve; the message says why and what would do."""


@dataclass(frozen=True)
class Detected:
    """A model found on disk: the engine, the path models.yaml points at, the entry's options."""

    backend: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = ""  # what it serves, for people: "chat", "embeddings", "images", ...
    projector: Path | None = None  # a GGUF vision projector found beside the model (served as options.mmproj)

    def entry(self, model_id: str, description: str = "") -> dict[str, Any]:
        """The models.yaml entry for this model."""
        entry: dict[str, Any] = {"id": model_id, "backend": self.backend, "path": str(self.path)}
        if description:
            entry["description"] = description
        options = dict(self.options)
        if self.projector is not None and self.backend == "gguf":
            options["mmproj"] = str(self.projector)
        if options:
            entry["options"] = options
        return entry


def detect(path: Path) -> Detected:
    """The engine and options for a local file or directory, or FormatError saying why none fits."""
    path = path.expanduser()
    if not path.exists():
        raise FormatError(f"{path} does not exist")
    if path.is_file():
        return _file(path)
    return _directory(path)


def is_projector(path: Path) -> bool:
    """A GGUF vision projector (mmproj): served beside a model, never alone."""
    if "mmproj" in path.name.lower():
        return True
    try:
        return GgufFile.read(path).architecture == "clip"
    except GgufFileError:
        return False


def _file(path: Path) -> Detected:
    suffix = path.suffix.lower()
    if suffix == ".gguf" or _has_gguf_magic(path):
        return _gguf(path)
    if suffix == ".safetensors":
        raise FormatError(f"{path.name} is a single .safetensors checkpoint: point `add` at its model directory, "
                          "or declare a diffusers checkpoint by hand (options.pipeline and options.config)")
    if suffix in _PICKLE:
        raise FormatError(f"{path.name} is a pickle checkpoint; modelyard loads safetensors and GGUF only")
    raise FormatError(f"{path.name}: not a GGUF file or a model directory")


def _gguf(path: Path, projector: Path | None = None) -> Detected:
    try:
        info = GgufFile.read(path)
    except GgufFileError as exc:
        raise FormatError(str(exc)) from None
    if info.architecture == "clip":
        raise FormatError(f"{path.name} is a vision projector (mmproj), not a model: add the model it belongs to")
    if _split_part(path.name):
        raise FormatError(f"{path.name} is one part of a split GGUF; split files are not supported yet "
                          "(merge them with llama.cpp's llama-gguf-split --merge)")
    embedding = info.architecture in _GGUF_EMBEDDERS or info.arch_value("pooling_type") is not None
    return Detected("gguf", path, {"embedding": True} if embedding else {},
                    "embeddings" if embedding else "chat", projector)


def _directory(path: Path) -> Detected:
    if (path / "model_index.json").is_file():
        return _diffusers(path)
    config = _json(path / "config.json")
    if config is None:
        ggufs = [p for p in sorted(path.glob("*.gguf")) if not is_projector(p)]
        if len(ggufs) == 1:
            projectors = [p for p in sorted(path.glob("*.gguf")) if is_projector(p)]
            return _gguf(ggufs[0], projectors[0] if projectors else None)
        if ggufs:
            raise FormatError(f"{path} holds {len(ggufs)} GGUF files; add one of them: "
                              + ", ".join(p.name for p in ggufs))
        raise FormatError(f"{path} has no config.json, model_index.json or GGUF file")
    if (path / "model.bin").is_file() and "architectures" not in config:
        if "alignment_heads" in config or "lang_ids" in config or (path / "vocabulary.json").is_file() \
                or (path / "vocabulary.txt").is_file():
            return Detected("faster-whisper", path, {}, "transcription")
        raise FormatError(f"{path} is a CTranslate2 model that is not Whisper; only Whisper is served")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in _PICKLE]
        reason = "only pickle weights (" + ", ".join(pickles[:3]) + ")" if pickles else "no .safetensors weights"
        raise FormatError(f"{path} has {reason}; modelyard loads safetensors only")
    architectures = config.get("architectures") or []
    names = " ".join(architectures)
    if "Wav2Vec2ForCTC" in names:
        return Detected("wav2vec2", path, {}, "transcription")
    if "SeamlessM4Tv2" in names:
        return Detected("seamless-m4t", path, {}, "transcription, translation, speech")
    if "VitsModel" in names:
        return Detected("vits", path, {}, "speech")
    if "Whisper" in names:
        raise FormatError(f"{path} is a transformers Whisper; convert it for faster-whisper with "
                          "`ct2-transformers-converter --model DIR --output_dir OUT --copy_files tokenizer.json "
                          "preprocessor_config.json` and add OUT")
    if any(a.endswith(_CAUSAL) for a in architectures):
        return Detected("hf", path, {}, "chat")
    if architectures:
        if any(a.endswith(("ForConditionalGeneration", "ForImageTextToText", "ForVision2Seq")) for a in architectures):
            raise FormatError(f"{path} is a {architectures[0]} (vision or sequence-to-sequence); no engine here "
                              "serves it yet")
        return Detected("hf", path, {"embedding": True}, "embeddings")
    raise FormatError(f"{path}/config.json names no architecture")


def _diffusers(path: Path) -> Detected:
    index = _json(path / "model_index.json") or {}
    pipeline = str(index.get("_class_name", ""))
    if not re.fullmatch(r"StableDiffusion(XL)?Pipeline", pipeline):
        raise FormatError(f"{path} is a {pipeline or 'diffusers'} pipeline; Stable Diffusion 1.x/2.x and SDXL "
                          "text-to-image pipelines are served")
    if not list(path.glob("*/*.safetensors")):
        raise FormatError(f"{path} has no .safetensors component weights; modelyard loads safetensors only")
    return Detected("diffusers", path, {}, "images")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def _split_part(name: str) -> bool:
    return re.search(r"-\d{5}-of-\d{5}\.gguf$", name) is not None


def model_name(text: str) -> str:
    """A models.yaml id made from a repository, file or store name: lower case, safe characters."""
    name = re.sub(r"[^A-Za-z0-9._:/@+-]+", "-", text.strip()).strip("-./:")
    return (name or "model").lower()[:200]
