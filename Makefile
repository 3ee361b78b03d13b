# The README's two commands: `make serve` and `make test`. Both set up .venv first (pip, not uv:
# this machine's pip takes torch from local disk; llama-cpp-python compiles once, then pip caches it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= all,dev
PYTEST_ARGS ?=

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

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
