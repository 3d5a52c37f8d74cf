# Two commands matter: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: install demo test test-fast bench bench-engine bench-service bench-sweeps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/descent demo

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

bench: bench-engine bench-service bench-sweeps

bench-engine: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/engine.py

bench-service: install
	$(BIN)/python benchmarks/service.py

bench-sweeps: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/sweeps.py

clean:
	rm -rf $(VENV) .descent .pytest_cache
