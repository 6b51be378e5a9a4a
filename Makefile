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

BIN := $(VENV)/bin
VENV_PYTHON := $(BIN)/python
# Named after the torch versions: asking for other versions reinstalls, like editing pyproject.toml.
STAMP := $(VENV)/.matrec-setup-torch$(TORCH_VERSION)-torchvision$(TORCHVISION_VERSION).stamp
PACKAGES := coordinator agent sdk common
# One target per system tool the tests need, from the list in sdk/ctl/doctor.py (see `setup`).
TOOLS_SCRIPT := sdk/ctl/doctor.py
SYSTEM_TOOLS := $(shell $(PYTHON) $(TOOLS_SCRIPT) targets)

.DEFAULT_GOAL := help
.PHONY: help setup horovod $(SYSTEM_TOOLS) doctor demo test lint proto supabase bench clean distclean

help: ## list the targets
	@echo "usage: make TARGET [VAR=value ...]"
	@echo
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN { FS = ":.*## " } { printf "  %-16s %s\n", $$1, $$2 }'
	@echo
	@echo "system tools the tests need, one target each (setup runs them all):"
	@echo "  $(SYSTEM_TOOLS)"
	@echo
	@echo "variables: PYTHON=$(PYTHON) VENV=$(VENV) TORCH_VERSION=$(TORCH_VERSION)" \
		"TORCHVISION_VERSION=$(TORCHVISION_VERSION)"
	@echo "           TORCH_PIP_ARGS, DEMO_ARGS, PYTEST_ARGS, BENCH_ARGS (passed through)"

setup: $(STAMP) horovod $(SYSTEM_TOOLS) ## create .venv (VENV); install torch, the project (editable, dev tools), the system tools the tests need

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install --upgrade pip setuptools wheel
	$(VENV_PYTHON) -m pip install $(TORCH_PIP_ARGS) \
		torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(VENV_PYTHON) -m pip install -e '.[dev,imagenet,ui]'
	rm -f $(VENV)/.matrec-setup-*.stamp
	touch $@

# Horovod 0.28.1 (its last release) needs patching to build against current torch; the script
# builds it once into .cache/wheels/ (keyed by torch version and python) and installs that wheel,
# and returns at once when `import horovod.torch` already works.  Best effort: a failed build
# prints why and leaves matrec on torch.distributed (HOROVOD_REQUIRED=1 makes it fail instead).
horovod: $(STAMP) ## build Horovod 0.28.1 for this torch (cached wheel), best effort
	@bash scripts/build_horovod.sh $(VENV_PYTHON)

# The system tools the tests need (PostgreSQL server, tmux, Chromium, PostgREST, curl): one list,
# SYSTEM_TOOLS in sdk/ctl/doctor.py, names a target per tool, and `setup` depends on each. A
# target installs its tool with apt-get (PostgREST: with npm) where missing, and fails when that
# fails; without apt-get it warns. tests/unit/test_system_tools.py fails when a test needs a tool
# that is not in the list or not a prerequisite of `setup`.
$(SYSTEM_TOOLS):
	@$(PYTHON) $(TOOLS_SCRIPT) install $@

doctor: ## show each system tool the tests need (found / missing / how to install), torch, Horovod
	@$(if $(wildcard $(VENV_PYTHON)),$(VENV_PYTHON),$(PYTHON)) $(TOOLS_SCRIPT) doctor

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
