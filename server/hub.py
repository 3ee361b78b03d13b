"""Models from the Hugging Face Hub, through huggingface_hub (its cache, resumable downloads, progress
bars, HF_TOKEN, HF_ENDPOINT): which files a repository's model needs, their headers before any
weight is fetched, and the download.

    modelyard pull bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M   one quantization (+ its mmproj, as options.mmproj)
    modelyard pull Qwen/Qwen2.5-0.5B-Instruct                         a snapshot of what the engine loads

Before downloading, `stage()` lays out a header-only copy of the selection: small files (configs,
tokenizers) fetched for real into the Hub cache, weights as sparse files of their real size that hold
only their real header (safetensors headers and the GGUF metadata, read by range requests). The
engines' own spec and plan code then reads that copy exactly as it reads a download.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

GGUF_FIRST_READ = 256 * 1024  # grown x4 until the header fits: a 128k-token vocabulary takes ~6 MB
GGUF_MAX_HEADER = 256 * 1024 * 1024
QUANT_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q5_K_S", "Q6_K", "Q8_0", "IQ4_XS", "F16", "BF16")
# What an engine loads from a snapshot; weights are safetensors (CTranslate2's model.bin is not pickle).
_WANTED = ("*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken", "*.safetensors")
_CT2 = ("model.bin", "vocabulary.*")
_NEVER = ("original/*", "onnx/*", "openvino/*", "coreml/*", "flax_model*", "tf_model*", "*.msgpack", "*.h5",
          "*.onnx", "*.onnx_data", "safety_checker/*", "*.md", ".gitattributes", "*.non_ema.*", "*.ema.*")


class HubError(Exception):
    """The Hub could not be reached or the repository cannot be served; the message says which."""


def go_online() -> None:
    """`pull` is the one command that reaches the Hub: undo HF_HUB_OFFLINE (set for the server by the
    Makefile and the tests) for this process, before or after huggingface_hub was imported."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.pop(name, None)
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@dataclass(frozen=True)
class Reference:
    """`owner/name`, optionally `:QUANT` (a GGUF quantization) or `:FILE` (a file in the repository)."""

    repo: str
    selector: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        repo, _, selector = text.strip().partition(":")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise HubError(f"{text!r} is not a Hub repository: expected OWNER/NAME[:QUANT|:FILE]")
        return cls(repo, selector or None)

    def __str__(self) -> str:
        return f"{self.repo}:{self.selector}" if self.selector else self.repo


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


@dataclass(frozen=True)
class Selection:
    """The files to fetch from one commit of a repository, and how the model is laid out."""

    repo: str
    revision: str  # the commit, so the estimate and the download see the same files
    kind: str  # "gguf": one file (and its projector); "snapshot": a directory
    files: tuple[RemoteFile, ...]
    model_file: str | None = None  # gguf: the model's file
    projector: str | None = None  # gguf: the vision projector pulled with it
    available: tuple[str, ...] = ()  # gguf: the quantizations the repository offers

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def choose(repo: str, revision: str, files: list[RemoteFile], selector: str | None = None,
           include: tuple[str, ...] = ()) -> Selection:
    """Pick what to download from a repository's file list (pure: no network)."""
    ggufs = [f for f in files if f.path.lower().endswith(".gguf")]
    if ggufs:
        return _choose_gguf(repo, revision, ggufs, selector)
    if selector:
        wanted = [f for f in files if f.path == selector]
        if not wanted:
            raise HubError(f"{repo} has no file {selector!r} (and no GGUF files to pick a quantization from)")
    names = {f.path for f in files}
    patterns = list(_WANTED) + list(include)
    if "model.bin" in names and not any(n.endswith(".safetensors") for n in names):
        patterns += _CT2  # a CTranslate2 model (faster-whisper)
    elif not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        if pickles and not include:
            raise HubError(f"{repo} has only pickle weights ({', '.join(sorted(pickles)[:3])}); modelyard loads "
                           "safetensors and GGUF only (pass --include to fetch them anyway)")
    diffusers = "model_index.json" in names
    chosen = []
    for f in files:
        explicit = any(fnmatch.fnmatch(f.path, p) for p in include)
        if not explicit and (not any(fnmatch.fnmatch(f.path, p) for p in patterns)
                             or any(fnmatch.fnmatch(f.path, p) for p in _NEVER)):
            continue
        if not explicit and diffusers and "/" not in f.path and f.path.endswith(".safetensors"):
            continue  # a single-file copy of the whole pipeline beside the components
        if not explicit and _variant_of_plain(f.path, names):
            continue  # fp16 copies beside the full-precision weights: the pipeline loads one of them
        chosen.append(f)
    if not any(f.path.endswith((".safetensors", "model.bin")) for f in chosen):
        raise HubError(f"{repo} has no weights modelyard can load (safetensors, GGUF or a CTranslate2 model.bin)")
    return Selection(repo, revision, "snapshot", tuple(chosen))


def _variant_of_plain(path: str, names: set[str]) -> bool:
    match = re.match(r"(.*)\.(fp16|bf16)\.safetensors$", path)
    return bool(match) and f"{match.group(1)}.safetensors" in names


def quant_of(path: str) -> str:
    stem = PurePosixPath(path).name.removesuffix(".gguf")
    match = re.search(r"(?:^|[-_.])((?:UD-)?(?:I?Q\d[A-Z0-9_]*|BF16|FP16|F16|FP32|F32|MXFP4[A-Z0-9_]*))$", stem, re.I)
    return match.group(1).upper() if match else stem


def _choose_gguf(repo: str, revision: str, ggufs: list[RemoteFile], selector: str | None) -> Selection:
    projectors = [f for f in ggufs if "mmproj" in f.path.lower()]
    models = [f for f in ggufs if f not in projectors]
    available = tuple(sorted({quant_of(f.path) for f in models}))
    if not models:
        raise HubError(f"{repo} holds only vision projectors, no model")
    if selector and selector.lower().endswith(".gguf"):
        picked = [f for f in models if f.path == selector or PurePosixPath(f.path).name == selector]
    elif selector:
        token = re.compile(rf"(?<![A-Za-z0-9]){re.escape(selector)}(?![A-Za-z0-9_])", re.I)
        picked = [f for f in models if token.search(f.path)]
    elif len(models) == 1:
        picked = models
    else:
        quant = next((q for q in QUANT_PREFERENCE if q in available), None)
        picked = [f for f in models if quant_of(f.path) == quant] if quant else []
        if not picked:
            raise HubError(f"{repo} offers several files; name one: {repo}:QUANT with QUANT one of "
                           + ", ".join(available))
    if not picked:
        raise HubError(f"{repo} has no {selector!r}; it offers " + ", ".join(available))
    if len(picked) > 1:
        if all(re.search(r"-\d{5}-of-\d{5}\.gguf$", f.path) for f in picked):
            raise HubError(f"{repo}:{selector} is split into {len(picked)} files; split GGUF files are not "
                           "supported yet")
        raise HubError(f"{repo}:{selector} matches several files; name one: " + ", ".join(f.path for f in picked))
    model = picked[0]
    projector = min(projectors, key=lambda f: ("f16" not in f.path.lower(), f.size), default=None)
    files = (model,) if projector is None else (model, projector)
    return Selection(repo, revision, "gguf", files, model.path, projector.path if projector else None, available)


class Hub:
    """The Hub (or the mirror HF_ENDPOINT names), through huggingface_hub."""

    def __init__(self) -> None:
        from huggingface_hub import HfApi

        self.api = HfApi()

    def inspect(self, ref: Reference, revision: str | None = None, include: tuple[str, ...] = ()) -> Selection:
        """The commit, the file list with sizes, and the files to fetch; nothing is downloaded."""
        from huggingface_hub import RepoFile

        with self._errors(ref.repo):
            info = self.api.model_info(ref.repo, revision=revision)
            sha = info.sha or revision or "main"
            files = [RemoteFile(f.path, int(f.size)) for f in self.api.list_repo_tree(ref.repo, recursive=True,
                                                                                          revision=sha)
                     if isinstance(f, RepoFile)]
        return choose(ref.repo, sha, files, ref.selector, include)

    def stage(self, selection: Selection, into: Path) -> Path:
        """A header-only copy of the selection under `into`; the path the model's entry would point at."""
        for remote in selection.files:
            target = into / remote.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._errors(selection.repo):
                if remote.path.endswith(".gguf"):
                    self._stage_gguf(selection, remote, target)
                elif remote.path.endswith(".safetensors"):
                    self._stage_safetensors(selection, remote, target)
                elif remote.path.endswith(".bin"):
                    _sparse(target, b"", remote.size)
                else:
                    target.symlink_to(self._fetch(selection, remote.path))
        return into / selection.model_file if selection.kind == "gguf" else into

    def download(self, selection: Selection) -> Path:
        """Fetch the selection into the Hub cache (resumable, a progress bar per file); the model's path."""
        from huggingface_hub import hf_hub_download, snapshot_download

        with self._errors(selection.repo):
            if selection.kind == "gguf":
                paths = [hf_hub_download(selection.repo, f.path, revision=selection.revision)
                         for f in selection.files]
                return Path(paths[0])
            return Path(snapshot_download(selection.repo, revision=selection.revision,
                                          allow_patterns=[f.path for f in selection.files]))

    def projector_path(self, selection: Selection) -> Path | None:
        from huggingface_hub import hf_hub_download

        if selection.projector is None:
            return None
        return Path(hf_hub_download(selection.repo, selection.projector, revision=selection.revision))

    # ---- headers by range request ----------------------------------------------------------

    def _fetch(self, selection: Selection, path: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(selection.repo, path, revision=selection.revision))

    def _stage_safetensors(self, selection: Selection, remote: RemoteFile, target: Path) -> None:
        meta = self.api.parse_safetensors_file_metadata(selection.repo, remote.path, revision=selection.revision)
        header: dict = {name: {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(t.data_offsets)}
                        for name, t in meta.tensors.items()}
        if meta.metadata:
            header["__metadata__"] = meta.metadata
        raw = json.dumps(header).encode()
        _sparse(target, struct.pack("<Q", len(raw)) + raw, remote.size)

    def _stage_gguf(self, selection: Selection, remote: RemoteFile, target: Path) -> None:
        """The file's first bytes, enough to hold its whole header (metadata and tensor table)."""
        from gguf import GGUFReader

        want = min(remote.size, GGUF_FIRST_READ)
        while True:
            prefix = self._range(selection, remote.path, want)
            _sparse(target, prefix, remote.size)
            try:
                if GGUFReader(target).data_offset <= len(prefix):
                    return
            except Exception:  # the header runs past the prefix: the parse read zeros
                pass
            if want >= min(remote.size, GGUF_MAX_HEADER):
                raise HubError(f"{selection.repo}/{remote.path} is not a readable GGUF file")
            want = min(remote.size, want * 4, GGUF_MAX_HEADER)

    def _range(self, selection: Selection, path: str, length: int) -> bytes:
        """The first `length` bytes of a file, as huggingface_hub reads safetensors headers."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(selection.repo, path, revision=selection.revision, endpoint=self.api.endpoint)
        response = get_session().get(url, headers={**build_hf_headers(), "range": f"bytes=0-{length - 1}"})
        hf_raise_for_status(response)
        return response.content[:length]

    def _errors(self, repo: str):
        return _HubErrors(repo)


class _HubErrors:
    """huggingface_hub's and the network's errors as one HubError that says what to do."""

    def __init__(self, repo: str):
        self.repo = repo

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, HubError):
            return False
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, httpx2.TransportError | OfflineModeIsEnabled | ConnectionError):
            raise HubError(f"cannot reach the Hugging Face Hub at {endpoint()} ({type(exc).__name__}: {exc}); "
                           "`pull` is the one command that goes online: check the network, a proxy, or "
                           "HF_ENDPOINT") from None
        if isinstance(exc, GatedRepoError):
            raise HubError(f"{self.repo} is gated: accept its terms on the Hub, then set HF_TOKEN to a token of "
                           "that account") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise HubError(f"{self.repo} does not exist on {endpoint()} (or is private: set HF_TOKEN)") from None
        if isinstance(exc, RevisionNotFoundError):
            raise HubError(f"{self.repo} has no such revision") from None
        if isinstance(exc, HfHubHTTPError):
            raise HubError(f"the Hub refused a request for {self.repo}: {str(exc).splitlines()[0]}") from None
        return False


def _sparse(target: Path, prefix: bytes, size: int) -> None:
    """A file of `size` bytes holding `prefix` and holes (no disk used for the rest)."""
    with target.open("wb") as fh:
        fh.write(prefix)
        fh.truncate(max(size, len(prefix)))
