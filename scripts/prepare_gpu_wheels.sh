#!/usr/bin/env bash
# Prepares, on THIS machine, what scripts/gpu_check.sh installs on a lent GPU machine, which has no
# internet and lacks several of our dependencies (../shared/design/gpu-checks.md):
#
#   - wheels for the device's Python (3.12, manylinux x86_64) of what it lacks, at the versions this
#     venv runs; bitsandbytes slimmed to its CUDA 13 library;
#   - a CUDA build of llama-cpp-python for sm_90 (H100/H200), compiled here (~25 min on 2 cores) against a
#     merged toolkit folder (nvcc from /usr/local/cuda-13.0, cuBLAS from the pip nvidia-cublas package),
#     xz-compressed (the CUDA library alone is ~67 MB);
#   - the demo models (the gpu-marked tests load them);
#
# split into parts of at most 60 MiB under gpu-wheels/ (the device tool carries 64 MiB per call):
# carry one part per call (README, "Development"). Usage:
#
#   scripts/prepare_gpu_wheels.sh [--dry-run] [--skip-llama] [--llama-bench] [--gptqmodel] [--out DIR]
#                                 [--python-version 3.12]
# --llama-bench also builds llama.cpp's own llama-bench from the same sources and flags (another long
# CUDA compile), so the check can compare decode speed with it on the same file.
#   scripts/prepare_gpu_wheels.sh --split-only DIR     (re-split DIR's files into parts; no download, no build)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=gpu-wheels
PYVER=3.12
DRY=0
LLAMA=1
GPTQ=0
BENCH=0
SPLIT_ONLY=""
PART_MB=${PART_MB:-60}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
CUDA=${CUDA_ROOT:-/usr/local/cuda-13.0}
ARCH=${CUDA_ARCH:-90}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-llama) LLAMA=0 ;;
    --gptqmodel) GPTQ=1 ;;
    --llama-bench) BENCH=1 ;;
    --out) OUT=$2; shift ;;
    --python-version) PYVER=$2; shift ;;
    --split-only) SPLIT_ONLY=$2; shift ;;
    *) echo "prepare_gpu_wheels: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

run() {  # print, and run unless --dry-run
  echo "+ $*"
  if [ "$DRY" = 0 ]; then "$@"; fi
}

# Files into parts of at most PART_MB MiB, largest first (first fit); a file larger than a part is refused.
split_parts() {
  local src=$1 dest=$2
  "$PY" - "$src" "$dest" "$PART_MB" <<'EOF'
import shutil, sys
from pathlib import Path
src, dest, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) * 1024 * 1024
files = sorted((p for p in src.iterdir() if p.is_file()), key=lambda p: p.stat().st_size, reverse=True)
too_big = [p.name for p in files if p.stat().st_size > limit]
if too_big:
    sys.exit(f"prepare_gpu_wheels: larger than a {limit >> 20} MiB part: {', '.join(too_big)}")
parts: list[list[Path]] = []
for f in files:
    for part in parts:
        if sum(p.stat().st_size for p in part) + f.stat().st_size <= limit:
            part.append(f)
            break
    else:
        parts.append([f])
for i, part in enumerate(parts):
    folder = dest / chr(ord("a") + i)
    folder.mkdir(parents=True, exist_ok=True)
    for f in part:
        shutil.move(str(f), folder / f.name)
    print(f"{folder}: {sum((folder / f.name).stat().st_size for f in part) / 2**20:.1f} MiB, {len(part)} files")
EOF
}

if [ -n "$SPLIT_ONLY" ]; then
  split_parts "$SPLIT_ONLY" "$OUT"
  exit 0
fi

STAGE=$OUT/.staging
run mkdir -p "$STAGE"

# What the device lacks (seen 2026-11-27), pinned to what this venv runs. Not carried: what its own
# torch and transformers depend on (tokenizers, huggingface_hub, safetensors), which must stay theirs.
PACKAGES="fastapi starlette uvicorn h11 sse-starlette pydantic-settings python-dotenv python-multipart
  gguf llguidance faster-whisper ctranslate2 av soundfile bitsandbytes diffusers optimum ruamel.yaml openai jiter
  distro pytest-timeout psutil"
pins=""
for pkg in $PACKAGES; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg" 2>/dev/null || true)
  pins="$pins ${pkg}${version:+==$version}"
done
# shellcheck disable=SC2086
run "$PY" -m pip download --no-deps --only-binary :all: --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$STAGE" $pins

# bitsandbytes ships a library per CUDA version; the device runs CUDA 13: keep that one (and the CPU one).
slim_bnb() {
  "$PY" - "$STAGE" <<'EOF'
import base64, hashlib, sys, zipfile
from pathlib import Path
for wheel in Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        kept, record = [], None
        for item in src.infolist():
            name = item.filename
            if name.endswith(".dist-info/RECORD"):
                record = name
                continue
            if "libbitsandbytes_cuda" in name and "cuda13" not in name:
                continue
            data = src.read(name)
            dst.writestr(item, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            kept.append(f"{name},sha256={digest},{len(data)}")
        dst.writestr(record, "\n".join([*kept, f"{record},,"]) + "\n")
    slim.replace(wheel)
    print(f"{wheel.name}: {wheel.stat().st_size / 2**20:.1f} MiB after keeping the CUDA 13 library")
EOF
}
if [ "$DRY" = 0 ]; then slim_bnb; else echo "+ slim bitsandbytes to libbitsandbytes_cuda13*"; fi

# One toolkit folder: nvcc, nvvm, headers and libraries from the CUDA 13 toolkit, cuBLAS from pip's
# nvidia-cublas (the toolkit here lacks it), with the unversioned links CMake looks for.
merged_toolkit() {
  local site cublas root=$1
  site=$("$PY" -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))")
  cublas=$site/nvidia/cu13
  mkdir -p "$root/lib64" "$root/include"
  ln -sfn "$CUDA/bin" "$root/bin"
  ln -sfn "$CUDA/nvvm" "$root/nvvm"
  cp -rs "$CUDA/include/." "$root/include/"
  cp -rs "$CUDA/lib64/." "$root/lib64/"
  cp -rs "$cublas/include/." "$root/include/"
  cp -rs "$cublas/lib/." "$root/lib64/"
  ln -sf "$(ls "$root"/lib64/libcublas.so.13* | head -n 1)" "$root/lib64/libcublas.so"
  ln -sf "$(ls "$root"/lib64/libcublasLt.so.13* | head -n 1)" "$root/lib64/libcublasLt.so"
}

if [ "$LLAMA" = 1 ]; then
  LLAMA_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))" 2>/dev/null || echo 0.3.36)
  TOOLKIT=$(pwd)/$OUT/.toolkit
  if [ "$DRY" = 0 ]; then merged_toolkit "$TOOLKIT"; else echo "+ merge $CUDA (bin, nvvm, include, lib64) and pip's nvidia/cu13 cuBLAS into $TOOLKIT"; fi
  # NO_VMM: there is no libcuda stub here to link the virtual-memory API against.
  CMAKE="-DGGML_CUDA=ON -DGGML_CUDA_NO_VMM=ON -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DCUDAToolkit_ROOT=$TOOLKIT"
  CMAKE="$CMAKE -DCMAKE_CUDA_COMPILER=$CUDA/bin/nvcc -DGGML_NATIVE=OFF"
  run env CMAKE_ARGS="$CMAKE" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python \
    -w "$OUT/.llama" "llama-cpp-python==$LLAMA_VERSION"
  if [ "$DRY" = 0 ]; then
    for wheel in "$OUT"/.llama/llama_cpp_python-*.whl; do
      xz -T0 -9 -c "$wheel" > "$STAGE/$(basename "$wheel").xz"
    done
  else
    echo "+ xz -9 the wheel into $STAGE/llama_cpp_python-$LLAMA_VERSION-...whl.xz"
  fi
fi

if [ "$LLAMA" = 1 ] && [ "$BENCH" = 1 ]; then
  # llama-bench from the sources the wheel vendors, linked statically so it runs alone on the device.
  run "$PY" -m pip download --no-deps --no-binary :all: -d "$OUT/.src" "llama-cpp-python==$LLAMA_VERSION"
  SRC=$OUT/.src/llama_cpp_python-$LLAMA_VERSION
  if [ "$DRY" = 0 ]; then tar -xzf "$SRC.tar.gz" -C "$OUT/.src"; else echo "+ tar -xzf $SRC.tar.gz"; fi
  # shellcheck disable=SC2086
  run cmake -S "$SRC/vendor/llama.cpp" -B "$OUT/.bench" $CMAKE -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
    -DCMAKE_BUILD_TYPE=Release
  run cmake --build "$OUT/.bench" --target llama-bench -j "$(nproc)"
  if [ "$DRY" = 0 ]; then xz -T0 -9 -c "$OUT/.bench/bin/llama-bench" > "$STAGE/llama-bench.xz"; else
    echo "+ xz -9 llama-bench into $STAGE/llama-bench.xz"; fi
fi

if [ "$GPTQ" = 1 ]; then
  # gptqmodel has no binary wheel on PyPI: its CUDA kernels compile here like llama.cpp's (long).
  GPTQ_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('gptqmodel'))" 2>/dev/null || echo 7.7.0)
  run env CUDA_HOME="$OUT/.toolkit" TORCH_CUDA_ARCH_LIST="${ARCH:0:1}.${ARCH:1}" "$PY" -m pip wheel --no-deps \
    --no-build-isolation -w "$STAGE" "gptqmodel==$GPTQ_VERSION"
fi

# The demo models the GPU tests load (a few MB; building them there would need gptqmodel's CPU path).
run "$PY" -m tinymodels
if [ "$DRY" = 0 ]; then
  tar -C "$HOME/.cache/modelyard" -cJf "$STAGE/demo-models.tar.xz" demo
else
  echo "+ tar -cJf $STAGE/demo-models.tar.xz ~/.cache/modelyard/demo"
fi

if [ "$DRY" = 0 ]; then
  split_parts "$STAGE" "$OUT"
  rm -rf "$STAGE" "$OUT/.llama" "$OUT/.toolkit" "$OUT/.src" "$OUT/.bench"
else
  echo "+ split $STAGE into $OUT/a, $OUT/b, ... of at most $PART_MB MiB each"
fi
