# worker-manager: `make demo` runs the main job, `make test` the whole suite.
CARGO ?= cargo

.PHONY: all build build-deps build-lib build-cli deps demo demo-prefork install \
	install-lua install-cli test lint stress fuzz valgrind bench clean

all: build

# Everything the tests, demos and benchmarks need (nginx, its Lua module, luacheck,
# luarocks, valgrind, ...): installed when missing, as root.
deps:
	@scripts/install-deps.sh

# What building and installing need (cargo, a C compiler): checked, never installed,
# so that `make install` works without root.
build-deps:
	@scripts/install-deps.sh --build

build: build-deps
	$(CARGO) build --workspace --all-targets

# A real nginx with resty.worker.manager, driven through start, reload, kill -9 of a
# worker, binary upgrade and stop.
demo: deps
	$(CARGO) build --quiet -p worker-manager-ffi -p worker-manager-cli
	examples/openresty/demo.sh

# The same lifecycle on the Rust API alone: a pre-fork server.
demo-prefork: deps
	$(CARGO) run --quiet -p prefork -- demo

# Where cargo puts release builds (it honours CARGO_TARGET_DIR, and so does this).
RELEASE_DIR = $(or $(CARGO_TARGET_DIR),target)/release

build-lib: build-deps
	$(CARGO) build --release -p worker-manager-ffi

build-cli: build-deps
	$(CARGO) build --release -p worker-manager-cli

# Installs the CLI in $(PREFIX)/bin, and the Lua module and its library where LuaJIT
# looks by default (Debian's nginx, OpenResty). In OpenResty's own tree:
#   make install LUA_LIB_DIR=/usr/local/openresty/site/lualib LUA_CLIB_DIR=/usr/local/openresty/site/lualib
# Needs no root with a DESTDIR or a PREFIX the user can write.
PREFIX ?= /usr/local
LUA_LIB_DIR ?= $(PREFIX)/share/lua/5.1
LUA_CLIB_DIR ?= $(PREFIX)/lib/lua/5.1

install: install-lua install-cli

# The Lua module alone: its two files in LUA_LIB_DIR, its library in LUA_CLIB_DIR
# (what the LuaRocks rock installs, into the rock's directories).
install-lua: build-lib
	install -d $(DESTDIR)$(LUA_LIB_DIR)/resty/worker/manager $(DESTDIR)$(LUA_CLIB_DIR)
	install -m 0644 lib/resty/worker/manager.lua $(DESTDIR)$(LUA_LIB_DIR)/resty/worker/manager.lua
	install -m 0644 lib/resty/worker/manager/cdefs.lua $(DESTDIR)$(LUA_LIB_DIR)/resty/worker/manager/cdefs.lua
	install -m 0755 $(RELEASE_DIR)/libworker_manager_ffi.so $(DESTDIR)$(LUA_CLIB_DIR)/libworker_manager_ffi.so

install-cli: build-cli
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(RELEASE_DIR)/worker-manager $(DESTDIR)$(PREFIX)/bin/worker-manager

# Unit, process (real fork and kill -9), property and real-nginx tests. Runs as root:
# some tests chown files to another user, mount a tiny tmpfs, start nginx, run
# `make install` as nobody.
test: deps lint
	$(CARGO) test --workspace --no-fail-fast

# Reliability (docs/RELIABILITY.md): the kill and reload storms at full size, every
# fuzz target for FUZZ_SECONDS each, and memcheck. About 15 minutes.
STORM_KILLS ?= 300
STORM_RELOADS ?= 500
FUZZ_SECONDS ?= 300
# Each step is bounded, so that a hang fails loudly instead of running on: the storms
# take about 1.5 minutes, fuzzing 2 x FUZZ_SECONDS plus its build, memcheck about 3.
BOUNDED = scripts/bounded.sh

stress: deps
	WM_STORM_KILLS=$(STORM_KILLS) WM_STORM_RELOADS=$(STORM_RELOADS) \
		$(BOUNDED) 15m $(CARGO) test -p wm-tests --test storm -- --nocapture
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BOUNDED) $$((2 * $(FUZZ_SECONDS) + 900))s scripts/fuzz.sh
	$(BOUNDED) 20m scripts/valgrind.sh

fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

valgrind: deps
	scripts/valgrind.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	luacheck lib examples

# The core's microbenchmarks, then worker-manager in a real nginx side by side with
# the original (BASELINE, its manager.lua; empty: worker-manager alone). Writes
# docs/BENCHMARKS.md. About 15 minutes with the original (its crash detection at the
# default interval takes 15 to 25 s a kill).
BASELINE ?= $(wildcard ../shared/reference/lua-resty-worker-manager/manager.lua)
BENCH_ARGS ?=

bench: deps
	$(CARGO) build --release -p worker-manager-ffi -p wm-bench
	$(CARGO) bench -p worker-manager --bench core > target/micro.txt
	target/release/wm-bench --micro target/micro.txt $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)

clean:
	$(CARGO) clean
