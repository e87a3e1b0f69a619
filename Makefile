# Relais — the user's interface. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# All native-stack state (data, configs, logs, pids) lives here.
export RELAIS_STATE_DIR ?= $(CURDIR)/.state

NATIVE := deploy/native/infra.sh

.PHONY: help
help: ## Show this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

## --- native infrastructure (no Docker needed) ---------------------------------------------

.PHONY: infra-up
infra-up: ## Start Kafka (KRaft), Ceph RGW and Prometheus natively; installs what is missing
	@$(NATIVE) up

.PHONY: infra-down
infra-down: ## Stop the native infrastructure (Prometheus, Ceph, Kafka; data kept)
	@$(NATIVE) down

.PHONY: infra-status
infra-status: ## Show what runs, on which port, and where its logs are
	@$(NATIVE) status

.PHONY: infra-clean
infra-clean: ## Stop the native infrastructure and delete all of its state
	@$(NATIVE) clean

## --- build and test -----------------------------------------------------------------------

.PHONY: build
build: ## Build every crate (debug)
	$(CARGO) build --workspace --all-targets

.PHONY: release
release: ## Build the service binaries (release)
	$(CARGO) build --workspace --release --bins

.PHONY: test-tools
test-tools: ## Install the browser and API-conformance tools the tests drive (chromium, schemathesis)
	@deploy/native/test-tools.sh

.PHONY: test
test: infra-up test-tools ## Bring the native infrastructure up if needed, then run the whole test suite
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc

.PHONY: bench
bench: infra-up release ## Benchmarks measured in one run; report in artifacts/bench/
	python3 loadtest/bench/run.py

.PHONY: lint
lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all
