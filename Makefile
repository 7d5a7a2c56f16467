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

.PHONY: setup test quick test-realsize demo
setup: $(BIN)/self1e

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q -m "not realsize"

test-realsize: setup  # the real-geometry smoke tests (InternVL3-2B shapes, bf16 LoRA steps on the CPU)
	$(BIN)/python -m pytest -q -s -m realsize

quick: setup  # the development loop: lint, then every test not marked slow
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 -q -m "not slow and not realsize"

demo: setup
	$(BIN)/self1e demo
