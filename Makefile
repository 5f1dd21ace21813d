# Set-up is part of each target: a fresh clone needs only `make run` or `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint migrate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

tests/node_modules/.installed: tests/package-lock.json
	npm ci --prefix tests --no-audit --no-fund
	touch $@

bench/node_modules/.installed: bench/package-lock.json
	npm ci --prefix bench --no-audit --no-fund
	touch $@

run: $(STAMP)
	$(BIN)/huddle serve

migrate: $(STAMP)
	$(BIN)/huddle migrate

test: $(STAMP) tests/node_modules/.installed
	$(BIN)/pytest

bench: $(STAMP) bench/node_modules/.installed
	$(BIN)/python bench/run.py --write docs/benchmarks.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) tests/node_modules bench/node_modules
