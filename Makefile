# Quick start: `make smoke` (whole pipeline, offline, CPU, ~1 min after install) and `make test`.
# Both create .venv and install requirements.txt on first use.
#   make smoke ARGS="-S data.source=/abs/path/file.json -S train.epochs=2"   (any key, on top of the profile)

PYTHON ?= python3
VENV ?= .venv
SMOKE_DIR ?= build/smoke
ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist, one test file per process at a time); 0 runs the suite in this process.
TEST_PROCESSES ?= 2

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install smoke test clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	touch $@

# The real dvc.yaml run end to end on the offline profile, in a scratch copy (params.yaml stays as is).
smoke: install
	$(BIN)/python -m alpaca_qlora.cli.offline_workspace $(SMOKE_DIR) --force
	cd $(SMOKE_DIR) && dvc exp run $(ARGS)
	cd $(SMOKE_DIR) && dvc metrics show
	@echo "Smoke run in $(SMOKE_DIR): answers in $(SMOKE_DIR)/reports/generations.md (.jsonl), adapter and its card in $(SMOKE_DIR)/models/adapter, card with the evaluation in $(SMOKE_DIR)/reports/model_card.md, W&B run in $(SMOKE_DIR)/wandb (offline unless logged in)"

test: install
	$(BIN)/python -m pytest tests -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf build
