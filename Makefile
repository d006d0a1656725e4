# Stagewright's developer commands. `make help` lists them.
SHELL := bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
# The e2e tier's own light venv (pip only, no apt, no Kubernetes build): it runs on macOS and
# arm64 too. It ignores itself in git (a `*` .gitignore inside, as Python 3.13's venv writes).
E2E_VENV := .venv-e2e
PYTHON ?= python3
# The caller's PATH, before the project's tool dirs go in front of it: the kind targets and the
# e2e tier use the user's docker, kind, kubectl and helm, built for their machine and matching
# their cluster, not the pinned linux/amd64 kubectl/helm or the venv's kubectl wheel.
USER_PATH := $(PATH)
# The project's cache (Kubernetes binaries, images, helm/kubectl), as hack/*.sh find it.
STAGEWRIGHT_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stagewright
export STAGEWRIGHT_CACHE
export PATH := $(CURDIR)/$(VENV)/bin:$(STAGEWRIGHT_CACHE)/bin:$(PATH)
# The sandbox (hack/sandbox) is test and demo infrastructure, not part of the package.
export PYTHONPATH := $(CURDIR)/hack

.PHONY: help deps deps-test demo sandbox sandbox-down quickstart-check test test-faults test-unit test-cluster test-e2e e2e-deps lint crds kind-up kind-down clean

help: ## List the commands
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## Install apt/pip packages and build the Kubernetes binaries (cached; first run ~6 min)
	hack/install-deps.sh

# The tests also install the operator's own image (Helm, kustomize): built beside the
# Kubernetes compile on a first run, so its downloads overlap the compile.
deps-test:
	hack/install-deps.sh --operator-image

demo: deps ## Build a multi-stage sample at two targets on the sandbox node, print both statuses
	$(PY) -m sandbox.demo

sandbox: deps ## Start the sandbox and keep it up for kubectl and stagewright (Ctrl-C stops it)
	$(PY) -m sandbox.keep

sandbox-down: ## Stop the sandbox `make sandbox` keeps up, from any terminal
	$(PY) -m sandbox.keep --down

quickstart-check: deps ## Run the README's quick start word for word on `make sandbox` (CI)
	$(PY) -m sandbox.quickstart_check

test: deps-test lint ## Lint, then run the unit and cluster test tiers (CI runs this, then test-faults)
	$(PY) -m pytest -m "not faults" tests/unit tests/cluster tests/e2e

test-faults: deps-test ## Fault injection and 2,000 generated ImageBuilds on the cluster (~6 min)
	$(PY) -m pytest -m faults tests/cluster

test-unit: ## Run the unit tier only (no servers)
	$(PY) -m pytest tests/unit

test-cluster: deps-test ## Run the cluster tier (a real one-node cluster, registry, real Kaniko)
	$(PY) -m pytest -m "not faults" tests/cluster

test-e2e: e2e-deps ## Run the kind e2e tier on the current kube context (make kind-up first)
	PATH="$(USER_PATH)" $(E2E_VENV)/bin/python -m pytest tests/e2e --e2e

e2e-deps: $(E2E_VENV)/.installed ## Make the e2e tier's venv (pip install -e .[test]; Python >= 3.11)

$(E2E_VENV)/.installed: pyproject.toml
	PATH="$(USER_PATH)" $(PYTHON) -m venv $(E2E_VENV)
	echo '*' > $(E2E_VENV)/.gitignore
	$(E2E_VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

lint: ## ruff, mypy --strict, import layering, shellcheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	shellcheck -x hack/*.sh hack/lib/*.sh .ci/run

crds: ## Regenerate crds/ and the chart's copy from the API models
	$(PY) -m stagewright.cli crd > crds/imagebuilds.stagewright.dev.yaml
	cp crds/imagebuilds.stagewright.dev.yaml charts/stagewright/files/crds/

kind-up: ## kind cluster + local registry + the operator (needs docker, kind, kubectl, helm)
	PATH="$(USER_PATH)" hack/kind-up.sh

kind-down: ## Delete the kind cluster and its registry
	PATH="$(USER_PATH)" hack/kind-down.sh

clean: ## Remove the venv and caches in the tree (keeps ~/.cache/stagewright)
	rm -rf $(VENV) .venv-e2e .mypy_cache .ruff_cache .pytest_cache
