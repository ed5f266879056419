# worker-manager: `make demo` runs the main job, `make test` the whole suite.
CARGO ?= cargo

.PHONY: all build deps demo test lint bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

# A pre-fork server on the Rust API, driven through start, reload, kill -9 and stop.
demo: deps
	$(CARGO) run --quiet -p prefork -- demo

# Unit, process (real fork and kill -9) and property tests. Runs as root: some tests
# chown files to another user and mount a tiny tmpfs.
test: deps lint
	$(CARGO) test --workspace --no-fail-fast

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Microbenchmarks; figures are quoted in docs/BENCHMARKS.md.
bench: deps
	$(CARGO) bench -p worker-manager

clean:
	$(CARGO) clean
