"""The peer to beat: llama.cpp's own `llama-server`, built once from the very llama.cpp sources the
installed llama-cpp-python release vendors (same engine code, same CPU flags as our worker's).

The benchmark's own setup, never the test suite's: the sdist comes from pip's cache or
`pip download llama-cpp-python==<installed> --no-binary :all: --no-deps`, the binary is cached under
~/.cache/modelyard/bench/llama-server-<version>/.

    python -m bench.llama_server        # build (or find) it and print its path
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path("~/.cache/modelyard/bench").expanduser()
# Where an sdist may already lie (a setup step that fetched it before us).
_SDIST_DIRS = (CACHE / "src", Path(tempfile.gettempdir()) / "lcp-src")


def installed_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def binary(version: str | None = None) -> Path:
    version = version or installed_version()
    return CACHE / f"llama-server-{version}" / "llama-server"


def ensure(version: str | None = None, jobs: int | None = None) -> Path:
    """The llama-server binary for `version` (the installed llama-cpp-python's by default), built if missing."""
    version = version or installed_version()
    target = binary(version)
    if target.is_file():
        return target
    sdist = _sdist(version)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        source = _unpack(sdist, Path(tmp))
        build = Path(tmp) / "build"
        # As llama-cpp-python builds its library (GGML_NATIVE on, OpenMP as ggml defaults), without curl or the web UI.
        configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                     "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                     "-DBUILD_SHARED_LIBS=OFF"]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        print(f"building llama-server {version} from {sdist.name} (once; several minutes)", file=sys.stderr)
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j",
                        str(jobs or os.cpu_count() or 1)], check=True, stdout=subprocess.DEVNULL)
        built = next(build.rglob("llama-server"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.replace(target)  # atomic: a concurrent or interrupted build never leaves half a binary
    return target


def _sdist(version: str) -> Path:
    name = f"llama_cpp_python-{version}.tar.gz"
    for directory in _SDIST_DIRS:
        if (directory / name).is_file():
            return directory / name
    dest = CACHE / "src"
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary",
                    ":all:", "--no-deps", "--no-build-isolation", "-d", str(dest)], check=True)
    return dest / name


def _unpack(sdist: Path, into: Path) -> Path:
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        archive.extractall(into, members=members, filter="data")
    return into / prefix


if __name__ == "__main__":
    print(ensure())
