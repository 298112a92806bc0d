# Two commands do all the set-up on a fresh machine: `make up` runs Infernet, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install up test test-unit test-integration test-e2e bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "Installing Infernet. The first install compiles llama.cpp (llama-cpp-python, the built-in"
	@echo "engine): about 4-5 minutes on 2 cores; pip caches the wheel for later installs."
	$(PY) -m pip install --progress-bar on -e '.[test]'
	touch $@

install: $(VENV)/.installed

## Run the all-in-one stack: embedded NATS + PostgreSQL, the control plane and a node agent.
up: install
	$(VENV)/bin/infernet-control-plane dev

## Install and run every test (unit, integration, e2e).
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

## The fast tier: pure code only, seconds.
test-unit: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -q tests/e2e $(PYTEST_ARGS)

## Benchmarks (not tests): figures go into docs/benchmarks.md.
bench: install
	$(PY) -m bench.jobs_bench
	$(PY) -m bench.streaming_bench
	$(PY) -m bench.openai_bench

clean:
	rm -rf $(VENV) .infernet .pytest_cache
