# Two commands do all the set-up on a fresh machine: `make up` runs Infernet, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install chromium up test test-unit test-integration test-e2e test-browser bench clean

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

## Debian's chromium for the console's browser tests (Playwright drives it; Playwright's own browser
## download cannot work here). Installed with apt-get when missing and possible; else those tests skip, saying why.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing Debian's chromium (apt-get) for the console's browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: apt-get could not install chromium: the browser tests will be skipped"; \
	else echo "warning: chromium is missing and apt-get cannot run here (needs root): the browser tests will be skipped"; fi

## Install and run every test (unit, integration, e2e, browser).
test: install chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

## The fast tier: pure code only, seconds.
test-unit: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -q tests/e2e $(PYTEST_ARGS)

## The web console in a real browser (Debian's chromium, driven by Playwright).
test-browser: install chromium
	$(PY) -m pytest -q tests/browser $(PYTEST_ARGS)

## Benchmarks (not tests): figures go into docs/benchmarks.md. bench.vs_litellm installs LiteLLM 1.80.0 into its
## own cached virtualenv (never a dependency of Infernet).
bench: install
	$(PY) -m bench.jobs_bench
	$(PY) -m bench.streaming_bench
	$(PY) -m bench.openai_bench
	$(PY) -m bench.vs_litellm

clean:
	rm -rf $(VENV) .infernet .pytest_cache
