# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed-dev

# Start the local cluster (Ray head, embedded Redis, Serve app) and replay the access log.
demo: install
	$(BIN)/jitgate up
	$(BIN)/jitgate replay --profile replay

test: install
	$(BIN)/python -m pytest
