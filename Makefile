# Every target sets up what it needs: a venv in .venv (ignored by git) with the
# project installed in editable mode and its dev tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test unit lint format launcher bench-wrpc clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## lint: ruff (lint + format check) and mypy (strict on provider/)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint, then every test (unit and integration, real nats-server on loopback)
test: lint
	$(BIN)/python -m pytest

unit: setup
	$(BIN)/python -m pytest tests/unit

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## launcher: build/wasmcloud-ws-provider, the executable a provider archive carries
launcher: setup
	$(BIN)/python -c "from pathlib import Path; from provider.host.launcher import write_launcher; print(write_launcher(Path('build/wasmcloud-ws-provider')))"

## bench-wrpc: wRPC calls/s next to plain nats-py request/reply, measured in one run
bench-wrpc: setup
	$(BIN)/python -m bench.wrpc

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
