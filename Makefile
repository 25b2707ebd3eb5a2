# Every target sets up what it needs: a venv in .venv (ignored by git) with the
# project installed in editable mode and its dev tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test unit lint format launcher bench bench-wrpc clean run components chromium

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

## test: lint, then every test (unit and integration, real nats-server on loopback, real wasm
## components, headless Chromium for the demo page)
test: lint chromium
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

## bench: the provider against a bare websockets server (throughput, latency, CPU per echo, memory,
## broadcast): tables on stdout, raw numbers and chart in bench/results/<time>/, and the same
## published to docs/bench-results.json, docs/bench.png and the README's results (bench/report.py)
BENCH_STAMP := $(VENV)/.bench-installed
bench: setup $(BENCH_STAMP)
	$(BIN)/python -m bench.ws

$(BENCH_STAMP): pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

## run: NATS, the provider (server mode on 127.0.0.1:8080) and the chat component from wadm.yaml
run: setup
	$(BIN)/python -m provider.host run wadm.yaml

## components: build components/* into build/components/*.wasm (cached by a hash of their inputs)
components: setup
	$(BIN)/python -m provider.host build

## chromium: headless Chromium for the browser test (Debian's package; needs root and apt)
CHROMIUM := /usr/bin/chromium
chromium: $(CHROMIUM)

$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
