# embedserve: `make help` lists the targets. Everything runs in .venv (created by `make setup`).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.setup-stamp
PORT ?= 3000
IMAGE ?= all
MODEL_NAME ?= embedserve-all-minilm-l6-v2
EXPORT_ARGS ?=
BENCH_ARGS ?=
SOAK_ARGS ?=
BULK_ARGS ?=
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1
export BENTOML_DO_NOT_TRACK := true

.PHONY: help setup export serve build test test-fast lint format bench bench-peers soak bulk lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: PORT=$(PORT) MODEL_NAME=$(MODEL_NAME) EXPORT_ARGS='...' PYTEST_ARGS='...'"

setup: $(STAMP) ## create .venv and install everything, pinned by requirements/constraints.txt (idempotent)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e ".[export,model,test,bench,bulk,dev]"
	touch $(STAMP)

export: setup ## export the default model (or EXPORT_ARGS='--model ...'): ONNX, O2, int8, parity gate, model store
	$(PY) -m export $(EXPORT_ARGS)

model: setup
	@$(PY) -m export find --tag $(MODEL_NAME) >/dev/null 2>&1 || $(PY) -m export --name $(MODEL_NAME) $(EXPORT_ARGS)

serve: model ## set up, export the default model if the store lacks it, and serve it on PORT (default 3000)
	EMBEDSERVE_MODEL=$(MODEL_NAME):latest $(BIN)/bentoml serve service:Embeddings --port $(PORT)

build: setup ## export if needed, re-run the parity gate, then `bentoml build` the GPU and CPU images (IMAGE=gpu|cpu: one)
	$(PY) -m export build --name $(MODEL_NAME) --image $(IMAGE) $(EXPORT_ARGS)

test: setup ## set up and run the whole test suite (unit, export, runtime, service)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup ## the tests that need no exported MiniLM and no server
	$(BIN)/pytest -m "not slow and not service" $(PYTEST_ARGS)

lint: setup ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff's formatting and fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: model ## run the benchmarks (library and HTTP); results go to benchmarks/results/
	$(PY) benchmarks/run_all.py

bench-peers: model ## embedserve vs infinity-emb over HTTP with wrk (BENCH_ARGS='...'); sets up build/peers first
	PROJECT_VENV=$(VENV) bash benchmarks/peers/setup_infinity.sh
	$(PY) -m benchmarks.bench_peers $(BENCH_ARGS)

soak: model ## 64 clients x 5 minutes with answer checks, a 512-client burst, a killed worker -> benchmarks/results/soak.json
	$(PY) -m benchmarks.soak --start --model $(MODEL_NAME):latest $(SOAK_ARGS)

bulk: model ## embed a corpus into Parquet: BULK_ARGS='INPUT OUTPUT [--ray local] ...' (python -m embedserve.bulk -h)
	$(PY) -m embedserve.bulk --model $(MODEL_NAME):latest $(BULK_ARGS)

lock: ## re-resolve requirements/constraints.txt from the current .venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^embedserve' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

clean: ## remove build outputs (not .venv, not the BentoML store)
	rm -rf build .pytest_cache .ruff_cache
