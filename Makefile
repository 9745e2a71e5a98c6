# marketpipe: `make demo` and `make test` do all the set-up a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster
export MARKETPIPE_LAKE_URL ?= $(CURDIR)/data/lake
export MARKETPIPE_LANDING_URL ?= $(CURDIR)/data/landing
export MARKETPIPE_SPOOL_DIR ?= $(CURDIR)/data/spool
UI_PORT ?= 3000
# Dagster writes events in batches instead of one SQLite commit each (see FACTS.md).
export DAGSTER_EVENT_BATCH_SIZE ?= 1000

.PHONY: install demo test lint ui bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# dagster.yaml into DAGSTER_HOME on every command: SQLite storage, or Postgres when
# MARKETPIPE_PG_URL is set (deploy/dagster-postgres.yaml appended; see README).
install: $(STAMP)
	$(BIN)/python -m marketpipe_assets.instance_config

demo: install
	$(BIN)/python -m marketpipe_assets.demo

test: install lint
	$(BIN)/pytest -n 2 --dist loadgroup tests

lint: $(STAMP)
	$(BIN)/ruff check marketpipe_assets resources checks tests bench
	$(BIN)/ruff format --check marketpipe_assets resources checks tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# From DAGSTER_HOME: `dagster dev` warns about any dagster.yaml in its working directory that is
# not DAGSTER_HOME's, and the repository's is only the template written there by `install`.
# `dagster dev` itself warns that the dg CLI supersedes it (a warning about Dagster's CLI, not
# about this project, shown on every start); it is the command the Dagster UI docs still give.
ui: install
	cd "$(DAGSTER_HOME)" && PYTHONWARNINGS="ignore::Warning:click.core" \
		"$(CURDIR)/$(BIN)/dagster" dev -w "$(CURDIR)/workspace.yaml" \
		-h 127.0.0.1 -p $(UI_PORT)

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf data .dagster
