# meterkit: `make run` serves the gateway, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run dev-stripe test lint bench schema clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# `make run STRIPE=dev` points the gateway at `make dev-stripe` (the local Stripe stand-in).
DEV_STRIPE_PORT ?= 12111
ifeq ($(STRIPE),dev)
run: export METERKIT_STRIPE_API_BASE = http://127.0.0.1:$(DEV_STRIPE_PORT)
run: export METERKIT_STRIPE_API_KEY = sk_test_meterkit_dev
run: export METERKIT_STRIPE_WEBHOOK_SECRET = whsec_meterkit_dev
endif
run: $(VENV)/.installed
	$(BIN)/meterkit serve

dev-stripe: $(VENV)/.installed
	$(BIN)/meterkit dev stripe --port $(DEV_STRIPE_PORT)

test: $(VENV)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check app tests
	$(BIN)/mypy app tests
	$(BIN)/meterkit export-schema --check

schema: $(VENV)/.installed
	$(BIN)/meterkit export-schema

bench: $(VENV)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) meterkit.db meterkit.db-wal meterkit.db-shm
