# Every target does its own set-up, so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/playback-gateway serve --bind 127.0.0.1:8080

# Runs the gateway against a local System API simulator, so key rotation can be tried without Mux.
# DEMO_PORT picks the gateway's port when `make run` already holds 8080.
DEMO_PORT ?= 8080
demo: $(VENV)/.installed
	$(BIN)/python -m gateway.keys.simulator --demo --gateway-port $(DEMO_PORT)

test: $(STAMP)
	bash .ci/ensure-redis
	$(BIN)/ruff check .
	$(BIN)/playback-gateway policy test policies/
	$(BIN)/playback-gateway policy check policies/
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	bash .ci/ensure-redis
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } \
		|| { echo "wrk is missing: install it, for example: sudo apt-get install wrk" >&2; exit 1; }
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .gateway .pytest_cache .ruff_cache .hypothesis
