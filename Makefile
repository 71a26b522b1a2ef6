# vllm-batch: `make demo` runs the whole thing on this machine, `make test` runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast serve worker bench lint

setup:
	VLLM_BATCH_VENV=$(VENV) scripts/setup

demo: setup
	$(PY) scripts/demo.py

test: setup
	scripts/services
	scripts/browser
	scripts/labelstudio >/dev/null
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest jobs workers labeling tests/test_import_rules.py

serve: setup
	$(PY) manage.py migrate --noinput
	$(VENV)/bin/gunicorn batchsite.wsgi -c deploy/gunicorn.conf.py

worker: setup
	$(PY) manage.py watchdog

# make bench BENCH_ARGS=--quick: a smoke run (small files); BENCH_ARGS="--pairs 7 --requests 5000" and so on.
BENCH_ARGS ?=
bench: setup
	$(PY) bench/run_batch_bench.py $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
