# Two commands on a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
LOWEST_VENV := .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed

.PHONY: demo test test-lowest fuzz bench lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/cancel_run.py

# tether (no extras) in a venv per other CPython the machine has (pyenv's 3.12 and 3.13), for the
# interpreter-exit test (tests/run/test_interpreter_exit.py); nothing to do where there are none.
OTHER_STAMP := .venv-other/.installed
$(OTHER_STAMP): pyproject.toml
	mkdir -p .venv-other
	for py in $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[23]*/bin/python3 2>/dev/null); do \
		v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])') && \
		$$py -m venv --clear .venv-other/$$v && \
		.venv-other/$$v/bin/python -m pip install -q -e . || exit 1; \
	done
	touch $(OTHER_STAMP)

test: $(STAMP) $(OTHER_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The lowest version of every dependency pyproject.toml allows, each pinned in constraints/lowest.txt
# (tests/test_dependencies.py keeps the two equal); the test tools come at their newest.
$(LOWEST_STAMP): pyproject.toml constraints/lowest.txt
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -q -c constraints/lowest.txt -e '.[test]'
	touch $(LOWEST_STAMP)

# The whole suite, as `make test` runs it, on those lowest versions. Bounds come from failures there:
# starlette 0.38.6 (its TestClient closes its lifespan streams), redis 5.0.8 (a connection Redis closed
# is not handed out again), openai 3.30 (a stream drained after [DONE] keeps its connection; it needs
# httpx2 2.12). The interpreter-exit test's 3.12/3.13 venvs (.venv-other) have the newest versions.
test-lowest: $(LOWEST_STAMP) $(OTHER_STAMP)
	$(LOWEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

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
	$(BENCH_VENV)/bin/python bench/resume_latency.py
	$(BENCH_VENV)/bin/python bench/report.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(LOWEST_VENV) bench/results build dist .mypy_cache .ruff_cache
