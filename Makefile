# One venv, one pinned CPU torch: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.*

.PHONY: install test demo lint clean

$(BIN)/csrs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,convex]"
	touch $(BIN)/csrs

install: $(BIN)/csrs

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks

demo: install
	$(BIN)/csrs demo --out demo-results

clean:
	rm -rf $(VENV) demo-results
