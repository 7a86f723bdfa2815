# One command runner for README, CI and developers. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test lint mypy unit integration models clean prometheus

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
test: $(STAMP) prometheus lint mypy
	$(BIN)/python -m pytest

# The dashboard's test runs a real Prometheus server: Debian's package, installed here
# when it is missing (the test fails rather than skips without it).
APT := $(if $(filter 0,$(shell id -u)),,sudo) apt-get
prometheus:
	@command -v prometheus >/dev/null || \
	  $(APT) install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { $(APT) update -q >/dev/null && $(APT) install -y -q --no-install-recommends prometheus >/dev/null; } || \
	  { echo "make: the tests need a prometheus binary: apt-get install prometheus" >&2; exit 1; }

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP) prometheus
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
