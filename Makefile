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

.PHONY: setup serve test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m tinymodels
	$(BIN)/python -m server serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_spine.py
	$(BIN)/python bench/bench_media.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
