# Iotistic VPN: every entry point a platform engineer uses. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        ?= .venv
PY          := $(VENV)/bin/python
BIN         := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)
export CONTAINERS_CONF := $(abspath molecule/containers.conf)

.PHONY: help deps venv lint unit test bench lab lab-down image molecule e2e clean constraints

help: ## List the targets.
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install the Debian packages the checks and the lab need (idempotent).
	@scripts/install-deps.sh

$(VENV)/.stamp: requirements.txt constraints.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.stamp ## Create .venv with the pinned requirements and iotistic_vpn installed editable.

constraints: ## Re-resolve constraints.txt from requirements.txt in a scratch venv.
	rm -rf build/constraints-venv && python3 -m venv build/constraints-venv
	build/constraints-venv/bin/pip install -q -r requirements.txt
	{ echo "# Full pin set resolved from requirements.txt on Python 3.11 (regenerate: make constraints)."; \
	  build/constraints-venv/bin/pip freeze; } > constraints.txt

lint: venv ## ruff, yamllint, ansible-lint, actionlint, and no merge conflict markers.
	@if git grep -nE '^(<<<<<<<|>>>>>>>) '; then echo "lint: merge conflict markers above"; exit 1; fi
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint -s .
	scripts/lint-ansible.sh
	scripts/actionlint.sh

# The suite waits far more than it computes (handshakes, timeouts, PostgreSQL): one pytest-xdist
# worker per CPU. Each worker has its own PostgreSQL cluster and namespaces. PYTEST_WORKERS=0
# runs it in one process.
PYTEST_WORKERS ?= auto
unit: venv ## pytest: unit, module, Pulumi-mock and integration tests (real PostgreSQL, real OpenVPN).
	$(BIN)/pytest tests --ignore=tests/e2e -n $(PYTEST_WORKERS) --dist loadfile

image: deps ## Build the lab's Debian 12 + systemd base image once (debootstrap, podman import).
	scripts/build-lab-image.sh

molecule: venv image ## molecule test for every role scenario on podman.
	scripts/molecule-all.sh

e2e: venv image ## A fresh lab, the end-to-end tests against it (tests/e2e), the lab removed.
	scripts/e2e.sh

# The cheap checks first, so a lint failure stops the run before anything starts. unit and
# molecule share nothing and both wait more than they compute (handshakes, PostgreSQL, systemd
# boots), so they run side by side; e2e runs alone because its failover tests time the gateways.
test: deps venv lint ## Every check CI runs.
	$(MAKE) --no-print-directory --output-sync=line -j2 unit molecule
	$(MAKE) --no-print-directory e2e

bench: venv ## Benchmarks: ratios against anchors measured in the same run.
	scripts/bench-all.sh

lab: deps venv ## Bring up the demo fleet on this machine and print its table.
	scripts/lab.sh up

lab-down: ## Remove everything `make lab` made.
	scripts/lab.sh down

clean: ## Remove the virtual environment and build output.
	rm -rf $(VENV) build .pytest_cache .ruff_cache
