#!/usr/bin/env bash
# Installs what the build and the test suite need on a fresh Debian machine (as root),
# or says exactly what is missing. Idempotent: installs only what is absent.
set -euo pipefail

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
    [setpriv]=util-linux
    [valgrind]=valgrind
    [install]=coreutils
    [/usr/share/doc/lua-cjson/copyright]=lua-cjson
    [/usr/lib/python3/dist-packages/prometheus_client/parser.py]=python3-prometheus-client
)

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
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install a stable Rust toolchain (rustup, Rust 1.75 or newer)" >&2
    exit 1
fi
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
