# Two commands do all the set-up on a fresh machine:
#   make quickstart   the main job: the quickstart study on the embedded corpus, then its report
#   make test         the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: quickstart test bench

$(BIN)/optispace: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the version the tests ran on (else the newest, where no wheel of it fits this
	# Python). The default Linux wheel carries CUDA (several GB): for the CPU-only build, set
	# PIP_INDEX_URL to the CPU wheel index first.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

quickstart: $(BIN)/optispace
	$(BIN)/optispace search searches/quickstart.toml
	$(BIN)/optispace report --study quickstart --out reports/quickstart

test: $(BIN)/optispace
	$(BIN)/ruff check optispace primitives tests bench
	$(BIN)/pytest

# Each benchmark prints ratios against an anchor measured in the same run (see README).
BENCHES := bench_optimizer bench_train bench_report bench_probes bench_search bench_cli bench_regimes
bench: $(BIN)/optispace
	for b in $(BENCHES); do OMP_NUM_THREADS=1 $(BIN)/python bench/$$b.py || exit 1; done
