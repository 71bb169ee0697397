# Two commands on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/cancel_run.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Side-by-side figures (tether vs baselines in the same run); not part of `make test`.
bench: $(STAMP)
	$(BIN)/python bench/stream_throughput.py
	$(BIN)/python bench/cancel_latency.py
	$(BIN)/python bench/cross_worker_cancel.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache
