# Two entry points for a fresh machine with only Python: `make run` and `make test`.
# Each builds its own virtualenv from the pinned constraints before it runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt

.PHONY: run test lint bench bench-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: $(BIN)/python pyproject.toml requirements/constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed
	$(PIP) -e '.[test]'
	touch $@

run: $(VENV)/.run-installed
	$(BIN)/uploadsvc serve

lint: $(VENV)/.test-installed
	$(BIN)/ruff check uploadsvc tests benchmarks plugins
	$(BIN)/ruff format --check uploadsvc tests benchmarks plugins
	$(BIN)/mypy

test: $(VENV)/.test-installed lint
	$(BIN)/python -m pytest

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/run.py

bench-quick: $(VENV)/.test-installed
	$(BIN)/python benchmarks/run.py --quick
