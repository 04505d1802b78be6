# One venv, one pinned CPU torch: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.*

.PHONY: install test test-fast demo lint docs tables clean

$(BIN)/csrs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,convex]"
	touch $(BIN)/csrs

install: $(BIN)/csrs

test: install
	$(BIN)/python -m pytest

# Everything but the tests marked slow: a quick check while working (CI runs them all).
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks

# The site: tables re-rendered from docs/results/*.csv (TABLES=--check only verifies them, as CI
# does), then MkDocs with warnings as errors. NO_MKDOCS_2_WARNING silences Material's banner.
TABLES ?=
$(VENV)/.docs: pyproject.toml $(BIN)/csrs
	$(BIN)/pip install -q -e ".[docs]"
	touch $@

tables: install
	$(BIN)/python scripts/tables.py $(TABLES)

docs: $(VENV)/.docs tables
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

demo: install
	$(BIN)/csrs demo --out demo-results

clean:
	rm -rf $(VENV) demo-results site
