# The two README commands: `make demo` (set up + main job) and `make test` (set up + test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo
# pytest-xdist worker processes for `make test` (CI has 2 cores)
WORKERS ?= 2

.PHONY: demo test test-all bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/superjax demo --out $(OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(WORKERS) --dist worksteal

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(WORKERS) --dist worksteal -m ''

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_sparse_coding.py

lint: $(VENV)/.installed
	$(BIN)/ruff check superjax tests experiments benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
