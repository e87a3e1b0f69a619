# Relais — the user's interface. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# All native-stack state (data, configs, logs, pids) lives here.
export RELAIS_STATE_DIR ?= $(CURDIR)/.state

NATIVE := deploy/native/infra.sh
# Each suite deletes the Kafka topics its earlier runs left behind before it starts.
KAFKA := deploy/native/kafka.sh
COMPOSE ?= docker compose
COMPOSE_FILE := compose/compose.yaml
# SECURE=1: compose/secure.yaml over it (Kafka TLS + SCRAM, gRPC TLS + tokens, RGW over HTTPS).
DC := $(COMPOSE) -f $(COMPOSE_FILE) $(if $(SECURE),-f compose/secure.yaml,) --project-directory compose
N ?= 3
SCENARIO ?= steady
WORKERS ?= 1

.PHONY: help
help: ## Show this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

## --- the whole system in Docker Compose ----------------------------------------------------

.PHONY: up
up: ## Build and start everything in Compose, wait until healthy, print where to look (SECURE=1: secured)
	@$(if $(SECURE),deploy/compose-secure.sh,true)
	@$(DC) up -d --build --remove-orphans
	@deploy/compose-wait.sh $(DC)
	@$(MAKE) --no-print-directory urls

.PHONY: down
down: ## Stop the Compose stack (volumes kept; `make down VOLUMES=1` deletes them too)
	@$(DC) --profile load down $(if $(VOLUMES),--volumes,)

.PHONY: ps
ps: ## The Compose services and their health
	@$(DC) ps

.PHONY: logs
logs: ## Follow the services' logs (`make logs S=ingest-worker` for one)
	@$(DC) logs -f --tail=100 $(S)

.PHONY: scale
scale: ## Run N ingest-worker replicas (`make scale N=3`)
	@$(DC) up -d --no-recreate --scale ingest-worker=$(N) ingest-worker
	@$(DC) ps ingest-worker

.PHONY: load
load: ## Traffic from loadgen (`make load SCENARIO=burst`; scenarios in loadtest/scenarios/)
	@[ -f loadtest/scenarios/$(SCENARIO).toml ] || { \
		echo "no scenario '$(SCENARIO)'; there are: $$(cd loadtest/scenarios && ls *.toml | sed 's/\.toml$$//' | xargs)" >&2; \
		exit 2; }
	@if [ -f "$(RELAIS_STATE_DIR)/dev/running" ]; then \
		[ -x target/release/loadgen ] || $(MAKE) --no-print-directory release; \
		target/release/loadgen ingress --scenario loadtest/scenarios/$(SCENARIO).toml; \
	elif $(COMPOSE) version >/dev/null 2>&1; then \
		SCENARIO=$(SCENARIO) $(DC) --profile load run --rm loadgen; \
	else \
		echo "nothing to load: start the native stack with 'make dev' (or Compose with 'make up')" >&2; \
		exit 2; \
	fi

.PHONY: chaos
chaos: ## Set upstream-sim faults (`make chaos FAULTS='{"errors":{"503":0.3}}'`; FAULTS='{}' clears)
	@curl -fsS -X PUT -H 'Content-Type: application/json' --data '$(or $(FAULTS),{"errors":{"503":0.2},"latency":{"kind":"log_normal","median_ms":50,"sigma":0.8}})' \
		http://127.0.0.1:9104/admin/faults && echo

.PHONY: urls
urls: ## Where to look: dashboard, REST API, Grafana, Jaeger, Prometheus
	@deploy/urls.sh

## --- the project's images with podman (no Docker engine, no registry) ----------------------

.PHONY: images
images: ## Build every image from the project's Dockerfiles with podman (bases made locally; docs/containers.md)
	@deploy/podman/images.sh build

.PHONY: images-clean
images-clean: ## Delete the images and all of podman's state under .state/podman
	@deploy/podman/images.sh clean

.PHONY: test-containers
test-containers: prerequisites infra-up test-tools images ## Only the container test: the images run as Compose runs them
	$(CARGO) test -p relais-e2e --test containers -- --nocapture

## --- the same topology natively (no Docker) -------------------------------------------------

.PHONY: dev
dev: release ## Native infrastructure + every service as local processes (`make dev WORKERS=3`)
	@WORKERS=$(WORKERS) deploy/native/dev.sh up

.PHONY: dev-down
dev-down: ## Stop what `make dev` started (the infrastructure too)
	@deploy/native/dev.sh down

.PHONY: dev-status
dev-status: ## What `make dev` runs, where, and its logs
	@deploy/native/dev.sh status

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
build: prerequisites ## Build every crate (debug)
	$(CARGO) build --workspace --all-targets

.PHONY: prerequisites
prerequisites: ## Check the build prerequisites (Rust, C compiler, make, zlib headers) and install what is missing
	@deploy/native/prerequisites.sh

.PHONY: release
release: prerequisites ## Build the service binaries (release)
	@echo "$$(date +%H:%M:%S) [build] release binaries (a first build on 2 cores takes about 6 minutes; later ones seconds)" >&2
	$(CARGO) build --workspace --release --bins

.PHONY: test-tools
test-tools: ## Install the browser and API-conformance tools the tests drive (chromium, schemathesis)
	@deploy/native/test-tools.sh

.PHONY: test
test: prerequisites infra-up test-tools images ## Bring the native infrastructure up if needed, build the images, then run the whole test suite
	@$(KAFKA) prune '^it-'
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets --no-fail-fast
	$(CARGO) test --workspace --doc
	python3 -m unittest discover -s loadtest/bench -p 'test_*.py'

.PHONY: test-fast
test-fast: prerequisites ## Unit tests only (decisions, codecs, the gateway's HTTP and gRPC surface in process): no infrastructure
	$(CARGO) test --workspace --lib --bins --no-fail-fast
	python3 -m unittest discover -s loadtest/bench -p 'test_*.py'

.PHONY: e2e
e2e: prerequisites infra-up test-tools ## Fault scenarios under load with the verifier (kill -9, RGW down, broker restart, ...); report in artifacts/e2e/
	@$(KAFKA) prune '^e2e-'
	$(CARGO) build --workspace --bins
	$(CARGO) run -p relais-e2e --bin relais-e2e

FUZZ_SECONDS ?= 600
.PHONY: fuzz
fuzz: ## Fuzz the ingress normaliser and the protobuf decoders, FUZZ_SECONDS each (nightly + cargo-fuzz)
	@$(CARGO) +nightly fuzz --help >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd crates/ingress/fuzz && $(CARGO) +nightly fuzz run normalise -- -max_total_time=$(FUZZ_SECONDS)
	cd fuzz && for target in audit_record pipeline_event; do \
		$(CARGO) +nightly fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

.PHONY: bench
bench: infra-up release ## Benchmarks measured in one run; report in artifacts/bench/
	@$(KAFKA) prune '^bench\.'
	python3 loadtest/bench/run.py

.PHONY: lint
lint: prerequisites ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all
