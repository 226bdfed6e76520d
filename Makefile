# fedstock: every target installs what it needs first, so a fresh machine needs only `make`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/fedstock/v1/*.proto)

MODEL ?= lr
ROUNDS ?= 3
ROWS ?= 270000

.PHONY: install proto demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || (apt-get update && apt-get install -y python3 python3-venv)
	@python3 -c 'import ensurepip, venv' 2>/dev/null || (apt-get update && apt-get install -y python3-venv)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Regenerates the committed stubs; tests/test_stubs.py fails when they are stale.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

# The whole federation on localhost: a server and nine province client processes.
demo: $(STAMP)
	$(PY) -m server.localrun --model $(MODEL) --rounds $(ROUNDS) --rows $(ROWS) --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m tests.bench

clean:
	rm -rf runs .pytest_cache .ruff_cache
