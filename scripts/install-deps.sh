#!/usr/bin/env bash
# What the build and the test suite need on a Debian machine.
#
#   install-deps.sh          everything: the test suite, the demos, the benchmarks and
#                            the reliability runs (nginx, its Lua module, luacheck,
#                            luarocks, valgrind, ...); as root, installs what is missing
#                            (idempotent), otherwise says exactly what is
#   install-deps.sh --build  only what `make build` and `make install` need: cargo and
#                            a C compiler to link with; checks, never installs, needs
#                            no root
set -euo pipefail

build_only=false
case "${1:-}" in
    --build) build_only=true ;;
    "") ;;
    *)
        echo "usage: $0 [--build]" >&2
        exit 2
        ;;
esac

need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install a stable Rust toolchain (rustup, Rust 1.75 or newer)" >&2
        exit 1
    fi
}

if $build_only; then
    need_cargo
    if ! command -v cc >/dev/null 2>&1; then
        echo "cc not found: cargo links with it; install a C compiler (Debian: apt-get install gcc)" >&2
        exit 1
    fi
    exit 0
fi

# command or file -> Debian package that provides it
declare -A packages=(
    [cc]=gcc
    [mount]=mount
    [chown]=coreutils
    [sleep]=coreutils
    [/usr/sbin/nginx]=nginx
    [/usr/lib/nginx/modules/ngx_http_lua_module.so]=libnginx-mod-http-lua
    [/usr/share/lua/5.1/resty/core.lua]=lua-resty-core
    [/usr/share/lua/5.1/resty/lrucache.lua]=lua-resty-lrucache
    [luacheck]=lua-check
    [luarocks]=luarocks
    [setpriv]=util-linux
    [unshare]=util-linux
    [valgrind]=valgrind
    [install]=coreutils
    [/usr/share/doc/lua-cjson/copyright]=lua-cjson
    [/usr/lib/python3/dist-packages/prometheus_client/parser.py]=python3-prometheus-client
    [/usr/bin/promtool]=prometheus
    [/usr/bin/prometheus]=prometheus
    [systemd-analyze]=systemd
)
# Packages installed without what they recommend: prometheus recommends its node
# exporter, a service with timers of its own that no test uses.
no_recommends=(prometheus)

missing=()
for need in "${!packages[@]}"; do
    if [[ "$need" == /* ]]; then
        [ -e "$need" ] || missing+=("${packages[$need]}")
    else
        command -v "$need" >/dev/null 2>&1 || missing+=("${packages[$need]}")
    fi
done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | grep -v '^$' || true)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing packages: ${missing[*]} (install them as root with apt-get)" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    apt-get update -qq
    # The tests run the packages' programs in their own prefixes, never their
    # services (nginx on port 80, prometheus on 9090): a policy-rc.d that refuses
    # every start keeps the packages' install scripts from starting them, for this
    # install only (Docker images ship one of their own, which stays).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\n# scripts/install-deps.sh: no service starts while it installs\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
    fi
    plain=() lean=()
    for package in "${missing[@]}"; do
        if [[ " ${no_recommends[*]} " == *" $package "* ]]; then
            lean+=("$package")
        else
            plain+=("$package")
        fi
    done
    export DEBIAN_FRONTEND=noninteractive
    if [ "${#plain[@]}" -gt 0 ]; then
        apt-get install -y -qq "${plain[@]}"
    fi
    if [ "${#lean[@]}" -gt 0 ]; then
        apt-get install -y -qq --no-install-recommends "${lean[@]}"
    fi
fi

need_cargo
for component in clippy rustfmt; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            rustup component add "$component"
        else
            echo "cargo $component not found: install the $component component" >&2
            exit 1
        fi
    fi
done
