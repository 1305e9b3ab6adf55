# Two commands on a fresh machine: `make quickstart` runs the main job, `make test` the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on these machines; a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv quickstart test lint bench clean

$(BIN)/metatune: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" -c constraints.txt
	touch $@

venv: $(BIN)/metatune

quickstart: venv
	$(BIN)/metatune run studies/quickstart.yaml

test: lint
	$(BIN)/python -m pytest -q -x --durations=15

lint: venv
	$(BIN)/ruff check metatune tests benchmarks
	$(BIN)/mypy

bench: venv
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) metatune_results .pytest_cache
