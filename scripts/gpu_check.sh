#!/usr/bin/env bash
# The GPU check: ONE command on a lent GPU machine; every result under $OUT; under 8 minutes there.
#
#   scripts/gpu_check.sh             the real run, after the parts of gpu-wheels/ were carried
#                                    (scripts/prepare_gpu_wheels.sh makes them here; README, "Development")
#   scripts/gpu_check.sh --dry-run   the same steps at tiny sizes on a CPU (tests/test_gpu_scripts.py runs it)
#
# Steps, each with its own time limit inside GPU_CHECK_SECONDS (default 450: the machine's start is
# outside this script); a step that no longer fits is reported as skipped, never silently dropped:
#   install    the carried wheels into .gpu-deps (no network there), the demo models
#   doctor     what the install sees: GPU, driver, engines with GPU support, the budget
#   gpu-tests  pytest -m gpu (all of tests/): every engine on CUDA, NVML per process and its container
#              fallback, the CUDA context released when a worker exits (and the scheduler's own GPU tests)
#   models     real-shape random-weight models (Llama-3-8B Q4_0 GGUF, Llama-2-7B for NF4, TinyLlama-1.1B
#              fp16, SD 1.5, Whisper large-v2) generated there
#   promise    the server under MODELYARD_BUDGET_MB=12288 with those models and a mixed concurrent
#              workload, NVML sampled every 10 ms: peak vs budget, CUDA OOMs, answers, swaps
#   estimates  each engine's estimate against its measured peak
#   decode     GGUF served vs llama-bench; HF fp16 and NF4 tok/s per decode path (dynamic, static, cuda-graphs)
#   warm-tier  bench/bench_warm.py on the device, where it exists (cold load vs swap-in from RAM)
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
LIMIT=${GPU_CHECK_SECONDS:-450}
WHEELS=${GPU_WHEELS:-gpu-wheels}
PY=${PYTHON:-python3}
START=$(date +%s)
SUMMARY=$OUT/summary.md
STATUS=0
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-2}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
  SCALE=dry; MODELS=$OUT/models; BUDGET=(); SECONDS_PROMISE=6; CLIENTS=3; TOKENS=8; ROUNDS=1
else
  SCALE=full; MODELS=${GPU_CHECK_MODELS:-/tmp/modelyard-gpu-models}; BUDGET=(--budget-mb 12288)
  SECONDS_PROMISE=60; CLIENTS=6; TOKENS=64; ROUNDS=1  # 7B NF4 through generate is slow: keep decode short
fi

{ echo "# modelyard GPU check ($([ "$DRY" = 1 ] && echo dry run on CPU || echo GPU))"; echo
  echo "started $(date -u +%FT%TZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo; } > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, note the outcome
  local name=$1 limit=$2 left rc began
  shift 2
  left=$((LIMIT - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then
    echo "- **$name**: skipped, out of time" | tee -a "$SUMMARY"
    STATUS=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log"
  if [ "$rc" -eq 0 ]; then
    echo "- **$name**: ok in $(($(date +%s) - began))s" >> "$SUMMARY"
  else
    echo "- **$name**: FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit') ) after $(($(date +%s) - began))s; see $name.log" >> "$SUMMARY"
    STATUS=1
  fi
}

install() {
  local deps=$PWD/.gpu-deps part
  mkdir -p "$deps"
  for part in "$WHEELS"/*/; do
    for packed in "$part"*.whl.xz; do
      [ -e "$packed" ] && xz -dkf "$packed"
    done
  done
  # --no-deps: torch, transformers and the CUDA libraries are the machine's own
  "$PY" -m pip install --quiet --no-index --no-deps --target "$deps" "$WHEELS"/*/*.whl || return 1
  for bench in "$WHEELS"/*/llama-bench.xz; do  # llama.cpp's own benchmark, built with the wheel's flags
    [ -e "$bench" ] && xz -dc "$bench" > "$WHEELS/llama-bench" && chmod +x "$WHEELS/llama-bench"
  done
  for demo in "$WHEELS"/*/demo-models.tar.xz; do
    [ -e "$demo" ] && mkdir -p "$HOME/.cache/modelyard" && tar -C "$HOME/.cache/modelyard" -xJf "$demo"
  done
  ls "$deps"
}

if [ "$DRY" = 0 ]; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >> "$SUMMARY"
  step install 90 install
  export PYTHONPATH="$PWD/.gpu-deps:$PYTHONPATH"
  # cudart and cuBLAS for the llama.cpp build live in the toolkit's target folder there
  export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
step doctor 60 "$PY" -m server doctor
step gpu-tests 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs tests/ --junitxml="$OUT/gpu-tests.xml"
step models 180 "$PY" bench/gpu_check.py models --scale "$SCALE" --root "$MODELS" --out "$OUT"
step promise 150 "$PY" bench/gpu_check.py promise --root "$MODELS" --out "$OUT" "${BUDGET[@]}" \
  --seconds "$SECONDS_PROMISE" --clients "$CLIENTS"
step estimates 120 "$PY" bench/gpu_check.py estimates --root "$MODELS" --out "$OUT"
LLAMA_BENCH=()
[ -x "$WHEELS/llama-bench" ] && LLAMA_BENCH=(--llama-bench "$WHEELS/llama-bench")
step decode 120 "$PY" bench/gpu_check.py decode --root "$MODELS" --out "$OUT" --tokens "$TOKENS" \
  --rounds "$ROUNDS" "${LLAMA_BENCH[@]}"
if [ "$DRY" = 0 ] && [ -f bench/bench_warm.py ]; then  # the scheduler's warm tier: cold load vs swap-in from RAM
  step warm-tier 100 "$PY" bench/bench_warm.py --device cuda --rounds 3
fi

{ echo; for table in promise estimates decode; do
    [ -f "$OUT/$table.md" ] && cat "$OUT/$table.md" && echo; done
  echo "finished in $(($(date +%s) - START))s, status $STATUS"; } >> "$SUMMARY"
cat "$SUMMARY"
exit "$STATUS"
