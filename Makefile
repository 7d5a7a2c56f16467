# One command each: `make test` (set up from nothing, run the whole suite) and `make demo`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/self1e: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(BIN)/self1e

.PHONY: setup test quick demo
setup: $(BIN)/self1e

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q

quick: setup  # the development loop: lint, then every test not marked slow
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

demo: setup
	$(BIN)/self1e demo
