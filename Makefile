# Two commands on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: demo test fuzz bench lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/cancel_run.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Property-based fuzzing of the run engine (tests/properties, large random hypothesis profile), on one
# core, until at least FUZZ_RUNS runs; prints the seed and a replay command for every failure.
# SEED=N replays a session; FUZZ_ARGS=--default-space leaves out the known failures (tests/properties/_known.py).
FUZZ_RUNS ?= 10000
fuzz: $(STAMP)
	nice -n 10 $(BIN)/python -m tests.properties.fuzz --runs $(FUZZ_RUNS) $(if $(SEED),--seed $(SEED)) $(FUZZ_ARGS)

# The bench-only virtualenv: tether plus the baselines (Agno) and matplotlib for the chart.
$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[server,redis]' -r bench/requirements.txt
	touch $(BENCH_STAMP)

# Side-by-side figures (tether vs baselines in the same run) into docs/benchmarks.md; not part of `make test`.
# Cross-worker cancel needs Redis (TETHER_REDIS_URL, default redis://127.0.0.1:6379/0).
bench: $(BENCH_STAMP)
	rm -rf bench/results
	$(BENCH_VENV)/bin/python bench/stream_throughput.py
	$(BENCH_VENV)/bin/python bench/cancel_latency.py
	$(BENCH_VENV)/bin/python bench/live_runs.py
	$(BENCH_VENV)/bin/python bench/server_load.py
	$(BENCH_VENV)/bin/python bench/cross_worker_cancel.py
	$(BENCH_VENV)/bin/python bench/report.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(BENCH_VENV) bench/results build dist .mypy_cache .ruff_cache
