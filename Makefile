# Two commands matter: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: install system-deps demo test test-fast chaos bench bench-engine bench-service bench-sweeps bench-metrics bench-chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Tools the deploy tests run (no Docker engine or Grafana here): Prometheus and promtool check
# deploy/prometheus and evaluate the dashboards' queries; docker-compose validates the compose file.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# tmux drives the CLI as a person would; chromium loads the page (tests/cli, tests/e2e/test_page.py).
APT_PACKAGES := prometheus docker-compose tmux chromium
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v docker-compose >/dev/null \
	  && command -v tmux >/dev/null && command -v chromium >/dev/null || { \
	  $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES) >/dev/null 2>&1 || { \
	    $(SUDO) apt-get update -q >/dev/null && \
	    $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES) >/dev/null; }; }

demo: install
	$(BIN)/descent demo

test: install system-deps
	$(BIN)/pytest -q

# The fault matrix: real processes killed, stopped and cut off (docs/design.md, "Faults").
chaos: install system-deps
	$(BIN)/pytest -q -m chaos tests/chaos

test-fast: install
	$(BIN)/pytest -q -m "not slow and not chaos"

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

bench: bench-engine bench-service bench-sweeps bench-metrics bench-chaos

bench-engine: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/engine.py

bench-service: install
	$(BIN)/python benchmarks/service.py

bench-sweeps: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/sweeps.py

bench-metrics: install
	$(BIN)/python benchmarks/metrics.py

bench-chaos: install
	$(BIN)/python benchmarks/chaos_load.py --stack both

clean:
	rm -rf $(VENV) .descent .pytest_cache
