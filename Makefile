# Two entry points on a fresh machine with Python 3.11 + pip:
#   make serve   create/refresh .venv, then run the whole service on http://127.0.0.1:8000
#   make test    create/refresh .venv, then lint and run every test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv serve test test-faults test-docker lint bench bench-smoke clean

venv: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the Python client (`import cosmogan`) is its own torch-free distribution
	$(BIN)/python -m pip install --quiet -e ./client
	# pzflow is only a carrier for the Buzzard truth catalog: its own deps (jax) are not needed
	$(BIN)/python -m pip install --quiet --no-deps 'pzflow==4.0.0'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/cosmogan serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# faults injected for real under a running service: kill -9 of Redis and of training
# processes, floods, Schemathesis over every operation (about 4 minutes)
test-faults: $(STAMP)
	$(BIN)/python -m pytest -ra -m faults $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no fault test was collected" >&2; exit 1; fi; exit $$rc

# the benchmark suite's smoke run as a test (every benchmark end to end, about a minute)
bench-smoke: $(STAMP)
	$(BIN)/python -m pytest -ra -m bench $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no bench test was collected" >&2; exit 1; fi; exit $$rc

# `docker-compose up` for real (root: installs and starts Docker if missing): Redis, the API and
# two CPU workers, the headline routes, a Redis crash mid-job (about 11 min cold, 1 min warm)
test-docker:
	.ci/test-docker

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
