# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

deps: ## Install Debian packages and build the pinned control-plane and node tools (cached)
	@hack/ensure-deps.sh
	@hack/build-tools.sh node >/dev/null

test: deps ## Run every test against a real etcd and kube-apiserver started on loopback, then the e2e test on a real node
	cargo build --locked --all-targets
	cd clients/go && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go test ./...
	LEADERLOCK_TOOLS_QUIET=1 hack/cluster.sh run -- cargo test --locked --all-targets
	LEADERLOCK_TOOLS_QUIET=1 LEADERLOCK_NODE=1 hack/cluster.sh run -- cargo test --locked --test e2e -- --ignored

demo: deps ## Demo on a real node: chart + examples with the image built here, a failover in the jobs' logs
	LEADERLOCK_TOOLS_QUIET=1 hack/demo.sh

demo-played: deps ## Fast demo without a node: controller on the host, the script plays the kubelet
	cargo build --locked
	LEADERLOCK_TOOLS_QUIET=1 hack/demo.sh --played

bench: deps ## Benchmarks side by side (LeaderLock, TryLock loop, etcd Mutex, client-go); writes BENCHMARKS.md
	hack/bench.sh

e2e: deps ## Failover on real nodes (kubelet, containerd, the chart, the examples' job, the Go controller, node loss on two nodes); writes BENCHMARKS.md
	hack/e2e.sh

chaos: deps ## All fault scenarios with the independent checker; writes CHAOS.md
	hack/chaos.sh

lint: ## cargo fmt --check and clippy with warnings as errors (CI runs it before make test)
	@hack/ensure-deps.sh
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings
	cd clients/go && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go vet ./...
	cd examples/go-controller && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go vet ./...

crd: ## Regenerate crds/ from the Rust types
	cargo run --quiet --bin leaderlock -- crd leaderlocks > crds/leaderlock.dev_leaderlocks.yaml
	cargo run --quiet --bin leaderlock -- crd handovers > crds/leaderlock.dev_handovers.yaml
	cp crds/*.yaml charts/leaderlock/crds/

up: deps ## Start a control plane in .cache/cluster and leave it running (source .cache/cluster/env)
	hack/cluster.sh up

down: ## Stop the control plane started by `make up`
	hack/cluster.sh down

.PHONY: help deps test demo demo-played bench chaos lint crd up down e2e
