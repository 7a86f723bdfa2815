# One command runner for README, CI and developers. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test lint mypy unit integration models clean

all: lint mypy test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# README's first command: the whole fleet end to end on an embedded Redis.
demo: $(STAMP)
	$(BIN)/inferfleet demo

# README's second command (and .ci/run's): lint, types, every test.
test: $(STAMP) lint mypy
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check inferfleet tests scripts
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

mypy: $(STAMP)
	$(BIN)/mypy

models: $(STAMP)
	$(BIN)/python scripts/build_models.py

clean:
	rm -rf $(VENV) .inferfleet .pytest_cache .mypy_cache .ruff_cache
