#!/bin/sh
# Which llama-cpp-python build `make setup` / `make serve` installs: prints `cuda` or `cpu` on stdout
# and why on stderr. GPU=auto (the default) picks cuda when nvidia-smi sees a GPU and the CUDA
# toolkit's nvcc is found (PATH, $CUDA_HOME/bin, $CUDA_PATH/bin or /usr/local/cuda/bin); GPU=cuda insists (and fails
# without nvcc); GPU=cpu forces the CPU build.
set -u
mode=${GPU:-auto}
nvcc=$(command -v nvcc 2>/dev/null || true)
for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-/usr/local/cuda}"; do
  if [ -z "$nvcc" ] && [ -n "$dir" ] && [ -x "$dir/bin/nvcc" ]; then nvcc="$dir/bin/nvcc"; fi
done
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
case "$mode" in
  cpu)
    echo "modelyard: GPU=cpu: llama-cpp-python builds for the CPU" >&2
    echo cpu ;;
  cuda)
    if [ -z "$nvcc" ]; then
      echo "modelyard: GPU=cuda but no nvcc (the CUDA toolkit) was found: install it, set CUDA_HOME, or use the Docker image" >&2
      exit 1
    fi
    echo "modelyard: GPU=cuda: llama-cpp-python builds with CUDA ($nvcc)" >&2
    echo cuda ;;
  auto)
    if [ -n "$gpu" ] && [ -n "$nvcc" ]; then
      echo "modelyard: NVIDIA GPU found ($gpu) and nvcc ($nvcc): llama-cpp-python builds with CUDA (GPU=cpu to skip)" >&2
      echo cuda
    elif [ -n "$gpu" ]; then
      echo "modelyard: NVIDIA GPU found ($gpu) but no nvcc: llama-cpp-python builds for the CPU; install the CUDA toolkit (or set CUDA_HOME) and run \`make setup GPU=cuda\`" >&2
      echo cpu
    else
      echo "modelyard: no NVIDIA GPU seen (nvidia-smi): llama-cpp-python builds for the CPU" >&2
      echo cpu
    fi ;;
  *)
    echo "modelyard: GPU must be auto, cuda or cpu (got '$mode')" >&2
    exit 2 ;;
esac
