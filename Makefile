# meterkit: `make run` serves the gateway, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run dev-stripe test lint bench schema client client-check clean test-debs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The typed client (clients/python) first: the gateway's CLI depends on it and it is not on PyPI.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ./clients/python -e '.[dev]'
	touch $@

# `make run STRIPE=dev`: the gateway and the local Stripe stand-in in one process (meterkit serve
# --dev-stripe), webhooks and Checkout's return pages on the gateway's own port (PORT=8123 moves it).
# `make dev-stripe` runs the stand-in alone (another terminal), delivering to the gateway on PORT;
# `make run STRIPE=dev-external` then points the gateway at it.
DEV_STRIPE_PORT ?= 12111
# PORT unset: METERKIT_PORT, else 8000 (what both commands read by themselves).
SERVE := $(BIN)/meterkit serve $(if $(PORT),--port $(PORT))
ifeq ($(STRIPE),dev-external)
run: export METERKIT_STRIPE_API_BASE = http://127.0.0.1:$(DEV_STRIPE_PORT)
run: export METERKIT_STRIPE_API_KEY = sk_test_meterkit_dev
run: export METERKIT_STRIPE_WEBHOOK_SECRET = whsec_meterkit_dev
endif
run: $(VENV)/.installed
	$(SERVE) $(if $(filter dev,$(STRIPE)),--dev-stripe --dev-stripe-port $(DEV_STRIPE_PORT))

dev-stripe: $(VENV)/.installed
	$(BIN)/meterkit dev stripe --port $(DEV_STRIPE_PORT) $(if $(PORT),--webhook-url http://127.0.0.1:$(PORT)/webhooks/stripe)

# Debian packages the tests need, as binary:package: the dashboard's browser tests drive chromium
# through Playwright (never a downloaded browser); the PostgreSQL pooling tests start pgbouncer
# themselves. `make test` installs what is missing when it can (root and apt-get), otherwise it says
# how, and stops.
TEST_DEBS := /usr/bin/chromium:chromium /usr/sbin/pgbouncer:pgbouncer
test-debs:
	@missing=""; for dep in $(TEST_DEBS); do [ -x "$${dep%%:*}" ] || missing="$$missing $${dep##*:}"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's$$missing for the tests (apt-get install)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "the tests need Debian's$$missing: run 'sudo apt-get install$$missing', then 'make test' again" >&2; \
	  exit 1; \
	fi

test: $(VENV)/.installed test-debs
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check app tests bench clients/python
	$(BIN)/ruff format --check app tests bench clients/python
	$(BIN)/mypy app tests bench clients/python/meterkit_client
	$(BIN)/lint-imports
	$(BIN)/meterkit export-schema --check
	$(MAKE) --no-print-directory client-check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

schema: $(VENV)/.installed
	$(BIN)/meterkit export-schema

# The typed Python client (clients/python/meterkit_client/generated) from schema.graphql +
# clients/python/queries/*.graphql, and the schema's digest in meterkit_client/_schema.py.
# ariadne-codegen runs in its own venv: it pins graphql-core < 3.3, strawberry needs >= 3.3.
CODEGEN_VENV ?= .venv-codegen
CLIENT := clients/python
CODEGEN_REQS := $(CLIENT)/codegen-requirements.txt

$(CODEGEN_VENV)/.installed: $(CODEGEN_REQS)
	$(PYTHON) -m venv $(CODEGEN_VENV)
	$(CODEGEN_VENV)/bin/pip install -q -r $(CODEGEN_REQS)
	touch $@

# Writes $(CLIENT)/meterkit_client/generated and _schema.py under the directory $(1).
define generate_client
	cd $(1) && $(abspath $(CODEGEN_VENV))/bin/ariadne-codegen client --config $(CLIENT)/codegen.toml >/dev/null && \
	printf '# Written by `make client`: the digest of the schema.graphql this client was generated from.\nSCHEMA_SHA256 = "%s"\n' \
	  "$$(sha256sum schema.graphql | cut -d' ' -f1)" > $(CLIENT)/meterkit_client/_schema.py
endef

client: $(CODEGEN_VENV)/.installed
	rm -rf $(CLIENT)/meterkit_client/generated
	$(call generate_client,.)

# Generate into a scratch copy of the inputs and diff: CI fails when the checked-in client is stale.
client-check: $(CODEGEN_VENV)/.installed
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	mkdir -p "$$tmp/$(CLIENT)/meterkit_client" && cp schema.graphql "$$tmp/" && \
	cp -r $(CLIENT)/codegen.toml $(CLIENT)/queries "$$tmp/$(CLIENT)/" && \
	$(call generate_client,"$$tmp") && cd $(CURDIR) && \
	if diff -r -x __pycache__ "$$tmp/$(CLIENT)/meterkit_client/generated" $(CLIENT)/meterkit_client/generated && \
	   diff "$$tmp/$(CLIENT)/meterkit_client/_schema.py" $(CLIENT)/meterkit_client/_schema.py; then \
	  echo "$(CLIENT)/meterkit_client is up to date"; \
	else echo "$(CLIENT)/meterkit_client is stale: run 'make client' and commit it" >&2; exit 1; fi

bench: $(VENV)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(CODEGEN_VENV) meterkit.db meterkit.db-wal meterkit.db-shm
