# The README's two commands: `make serve` and `make test`. Both set up .venv first (pip, not uv:
# this machine's pip takes torch from local disk; llama-cpp-python compiles once, then pip caches it).
# GPU=auto (default) builds llama-cpp-python with CUDA when nvidia-smi sees a GPU and nvcc is found
# (scripts/accelerator.sh says which and why); GPU=cuda insists, GPU=cpu forces the CPU build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
GPU    ?= auto
ACCEL  := $(shell GPU=$(GPU) sh scripts/accelerator.sh 2>/dev/null || echo unusable)
STAMP  := $(VENV)/.installed-$(ACCEL)
EXTRAS ?= all,dev
PYTEST_ARGS ?=
LLAMA_VERSION = $$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
LLAMA_GPU = $(BIN)/python -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)'
REBUILD_LLAMA = $(BIN)/python -m pip install --quiet --force-reinstall --no-deps --no-cache-dir \
	--no-binary llama-cpp-python "llama-cpp-python==$(LLAMA_VERSION)"

export GPTQMODEL_CPU_WORKERS ?= 2
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup tools serve test lint bench clean

setup: $(STAMP) tools

# The monitoring tests run a real Prometheus and promtool: Debian's package, installed once when
# missing (CI runs as root). Its own service is stopped right away: each test starts a private one.
# The page's browser tests drive Debian's headless Chromium through Playwright (no browser download),
# with a font for its text.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tools:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus && \
	  { $(SUDO) invoke-rc.d prometheus stop >/dev/null 2>&1 || true; }; }
	@command -v chromium >/dev/null && [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; }

# pip caches a built llama-cpp-python wheel whatever CMAKE_ARGS it was built with: after the install the
# build is checked, and rebuilt without the cache when it is not the one asked for.
$(STAMP): pyproject.toml
	@GPU=$(GPU) sh scripts/accelerator.sh >/dev/null
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(ACCEL),cuda)
	CMAKE_ARGS="-DGGML_CUDA=on $(CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(EXTRAS),gpu]'
	$(LLAMA_GPU) || CMAKE_ARGS="-DGGML_CUDA=on $(CMAKE_ARGS)" $(REBUILD_LLAMA)
	$(LLAMA_GPU) && echo "modelyard: llama-cpp-python is built with CUDA" || \
	  echo "modelyard: WARNING: llama-cpp-python still lacks CUDA after the rebuild (see pip's output above)"
else
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	! $(LLAMA_GPU) || CMAKE_ARGS="-DGGML_CUDA=off" $(REBUILD_LLAMA)
endif
	rm -f $(VENV)/.installed*
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m tinymodels
	$(BIN)/python -m server serve

test: $(STAMP) tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_spine.py
	$(BIN)/python bench/bench_media.py
	$(BIN)/python bench/bench_scheduler.py
	$(BIN)/python bench/bench_hf.py
	$(BIN)/python bench/bench_onnx.py
	$(BIN)/python bench/bench_warm.py
	$(BIN)/python bench/bench_schema.py
	$(BIN)/python bench/bench_connections.py
	$(BIN)/python bench/bench_perf.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
