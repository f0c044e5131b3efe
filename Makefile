# Every target sets up its own virtual environment from pyproject.toml first.
# It is made from the system's own python3 when that is 3.11 or newer and can make one,
# else from the first python3 on the PATH; `make PYTHON=...` picks another. The service's
# control plane is pure Python: Debian's build (optimised with profiles, libpython linked
# in) spends about an eighth less of the server's CPU a file than pyenv's default one
# (a shared libpython, no profiles), and its workers extract a fifth faster
# (docs/performance.md). A .venv made before stays as it is: `make clean` first.
SYSTEM_PYTHON := /usr/bin/python3
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $(SYSTEM_PYTHON) || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# buf, pinned in tools/buf/package-lock.json, installed from the npm registry.
BUF_DIR := tools/buf
BUF := $(BUF_DIR)/node_modules/.bin/buf
RELEASED_CONTRACT := protos/released/pdfbatch-v1.json

.PHONY: test lint typecheck pytest protos protos-check proto-lint proto-release demo bench clean

$(BUF): $(BUF_DIR)/package.json $(BUF_DIR)/package-lock.json
	npm ci --prefix $(BUF_DIR) --ignore-scripts --no-audit --no-fund
	touch $(BUF)

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
test: lint typecheck protos-check proto-lint pytest

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

## proto-lint: buf lint (STANDARD and COMMENTS, buf.yaml) and buf breaking (WIRE_JSON)
## against the last released contract.
proto-lint: $(BUF)
	$(BUF) lint
	$(BUF) breaking --against $(RELEASED_CONTRACT)

## proto-release: when a version is released, make its contract the one later changes
## are checked against (see docs/contract.md).
proto-release: $(BUF) $(STAMP)
	$(BUF) build --exclude-source-info -o -#format=json \
		| $(BIN)/python -m json.tool --indent 1 > $(RELEASED_CONTRACT)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(BUF_DIR)/node_modules
