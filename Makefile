# Every target sets up its own virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint typecheck pytest protos protos-check demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $(STAMP)

## demo: start the service on a fresh data directory and run a demo batch through it.
demo: $(STAMP)
	$(BIN)/python -m bench.demo

## bench: run every benchmark scenario, print the table, write bench/results/latest.json.
bench: $(STAMP)
	$(BIN)/python -m bench

## test: lint, type-check and run the whole test suite (what CI runs).
test: lint typecheck protos-check pytest

lint: $(STAMP)
	$(BIN)/ruff check actors server tests bench
	$(BIN)/ruff format --check actors server tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## protos: regenerate the committed gRPC code in server/gen from protos/.
protos: $(STAMP)
	$(BIN)/python protos/generate.py server/gen

## protos-check: fail if server/gen differs from what protos/ generates.
protos-check: $(STAMP)
	$(BIN)/python protos/generate.py --check server/gen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
