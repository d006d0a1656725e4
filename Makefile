# Stagewright's developer commands. `make help` lists them.
SHELL := bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.cache/stagewright/bin:$(PATH)
# The sandbox (hack/sandbox) is test and demo infrastructure, not part of the package.
export PYTHONPATH := $(CURDIR)/hack

.PHONY: help deps demo test test-unit test-cluster test-e2e lint crds kind-up kind-down clean

help: ## List the commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## Install apt/pip packages and build kube-apiserver (cached; first run ~8 min)
	hack/install-deps.sh

demo: deps ## Build a multi-stage sample at two targets on the local sandbox, print both statuses
	$(PY) -m sandbox.demo

test: deps lint ## Lint, then run the unit and cluster test tiers (what CI runs)
	$(PY) -m pytest tests/unit tests/cluster tests/e2e

test-unit: ## Run the unit tier only (no servers)
	$(PY) -m pytest tests/unit

test-cluster: deps ## Run the cluster tier (real apiserver, registry, buildah)
	$(PY) -m pytest tests/cluster

test-e2e: ## Run the kind e2e tier (needs a kind cluster: make kind-up)
	$(PY) -m pytest tests/e2e --e2e

lint: ## ruff, mypy --strict, import layering, shellcheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	shellcheck -x hack/*.sh hack/lib/*.sh .ci/run

crds: ## Regenerate crds/ and the chart's copy from the API models
	$(PY) -m stagewright.cli crd > crds/imagebuilds.stagewright.dev.yaml
	cp crds/imagebuilds.stagewright.dev.yaml charts/stagewright/files/crds/

kind-up: ## Create a kind cluster with a local registry and install the operator (needs docker, kind)
	hack/kind-up.sh

kind-down: ## Delete the kind cluster and its registry
	hack/kind-down.sh

clean: ## Remove the venv and caches in the tree (keeps ~/.cache/stagewright)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
