#!/usr/bin/env bash
# The scheduler's GPU checks, as ONE script for a lent GPU machine (see the project's GPU notes):
# the gpu-marked tests (CUDA context released when a model parks, resumes from RAM onto the device,
# the offload and CPU rungs) and the warm-tier benchmark on the device (cold load vs swap-in from
# RAM per engine family: PCIe, not this machine's disk, sets the RAM figure there).
#
#   OUT=/tmp/out scripts/gpu_check.sh            # results under $OUT
#   WHEELS=dir scripts/gpu_check.sh              # install carried wheels first (the lent machine has
#                                                # no fastapi, llama-cpp-python, ctranslate2, ...)
set -u -o pipefail
OUT=${OUT:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -3 | tee "$OUT/install.log"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
"$PYTHON" -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}
timeout 420 "$PYTHON" bench/bench_warm.py --device cuda --rounds 3 2>&1 | grep -v Warning | tee "$OUT/bench-warm.log"
echo "gpu tests exit code: $tests" | tee -a "$OUT/summary.txt"
exit "$tests"
