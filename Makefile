# The README's commands. Each target creates .venv and installs the project when it is
# missing or older than pyproject.toml, so a fresh clone needs only Python 3.11+.
# Variables (README, "Make variables"): DEMO_ARGS, DEMO_TRIALS, TRAIN_ARGS, SERVE_ARGS,
# MLFLOW_UI_ARGS, INPUT, OUTPUT, SCORE_ARGS, BENCH_ARGS, PYTEST_ARGS, PYTHON.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help venv lint test demo demo-2c train serve mlflow-ui bench reliability score clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,spark]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project

lint: $(STAMP) ## ruff (lint + format check), mypy and the import layers, as CI runs them
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Two parts: everything but the timing tests on two processes (each test file on one,
# so module fixtures start once), then the tests that measure latency or memory, alone.
# --no-loadscope-reorder keeps the collection's order (tests/conftest.py: longest files
# first) instead of pytest-xdist's (files with the most tests first).
# Exit 5 is pytest's "no test selected": a PYTEST_ARGS -k may leave one part empty.
test: $(STAMP) ## run the test suite (what CI runs)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

reliability: $(STAMP) ## load, outage, interrupted writes, hostile artifacts/input, access: the figures table
	$(PY) -m pytest tests/reliability $(PYTEST_ARGS)

demo: $(STAMP) ## the whole flow end to end: train, publish, activate, serve, predict
	$(PY) -m demo $(DEMO_ARGS)

demo-2c: $(STAMP) ## the same on the 2-class file, thresholds, and the lab's model against ours
	$(PY) -m demo --variant 2C $(DEMO_ARGS)

train: $(STAMP) ## run the Optuna study tracked in MLflow
	$(PY) -m pipelines.train $(TRAIN_ARGS)

serve: $(STAMP) ## serve the active model under granian (prints the console's URL)
	@# The URL from the settings and SERVE_ARGS; a bad setting is left to python -m api to report.
	@-$(PY) -c "import argparse; from conf.settings import load_settings; p = argparse.ArgumentParser(add_help=False); [p.add_argument(o) for o in ('--host', '--port', '--config')]; o = p.parse_known_args()[0]; a = load_settings(o.config).api; print('console:', ('https' if a.tls_cert else 'http') + f'://{o.host or a.host}:{o.port or a.port}/', ' (Ctrl-C stops the API)')" $(SERVE_ARGS) 2>/dev/null
	$(PY) -m api $(SERVE_ARGS)

mlflow-ui: $(STAMP) ## open the MLflow UI on http://127.0.0.1:5000
	$(PY) -m pipelines.mlflow_ui $(MLFLOW_UI_ARGS)

bench: $(STAMP) ## benchmarks against mlflow models serve / predict
	$(PY) -m bench $(BENCH_ARGS)

score: $(STAMP) ## score INPUT (CSV/Parquet file, dir or glob) into OUTPUT with Spark (SCORE_ARGS)
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make score INPUT=data.csv OUTPUT=dir [SCORE_ARGS='--format csv']" >&2; exit 2; }
	$(VENV)/bin/bridge score --input '$(INPUT)' --output '$(OUTPUT)' $(SCORE_ARGS)

clean: ## remove the venv, the embedded database, MLflow runs and outputs
	-$(VENV)/bin/bridge db stop 2>/dev/null
	rm -rf $(VENV) .registry mlruns/mlflow.db mlruns/artifacts outputs reports
