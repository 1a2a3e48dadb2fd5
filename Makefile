# Two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint stop clean bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tower demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

stop: $(STAMP)
	$(BIN)/tower server stop

bench: $(STAMP)
	$(BIN)/python bench/bench_dedup_plan.py
	$(BIN)/python bench/bench_concurrent_append.py
	$(BIN)/python bench/bench_plan_quality.py
	$(BIN)/python bench/bench_report.py
	$(BIN)/python bench/bench_throughput.py
	$(BIN)/python bench/bench_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache data
