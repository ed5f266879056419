#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer on the stable toolchain, without cargo-fuzz.
#
#   scripts/fuzz.sh                          every target, FUZZ_SECONDS (60) each
#   scripts/fuzz.sh <target> <seconds> [libFuzzer options...]
#
# Builds fuzz/ with the instrumentation `cargo fuzz build -s none` uses, then runs the
# target over fuzz/corpus/<target>. A crash leaves its input in fuzz/artifacts/<target>/
# and makes this script fail. Replay one with:
#   fuzz/target/<triple>/release/<target> fuzz/artifacts/<target>/crash-...
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
targets=(registry_file c_abi)

usage() {
    echo "usage: $0 [<target> <seconds> [libFuzzer options...]]" >&2
    echo "targets: ${targets[*]}" >&2
    exit 2
}

if [ $# -eq 0 ]; then
    failed=0
    for target in "${targets[@]}"; do
        "$0" "$target" "${FUZZ_SECONDS:-60}" || failed=1
    done
    exit "$failed"
fi
[ $# -ge 2 ] || usage
target=$1
seconds=$2
shift 2
[[ " ${targets[*]} " == *" $target "* ]] || usage
# libFuzzer takes 0 for no limit.
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage

triple=$(rustc -vV | sed -n 's/^host: //p')
# Exactly the flags of `cargo fuzz build -s none` (cargo-fuzz 0.13, src/project.rs),
# in its order, so that both share the build in fuzz/target: libFuzzer's coverage
# counters and comparison tracing, no sanitizer (those need a nightly compiler),
# debug assertions, which turn overflow checks on too. `--target` keeps the flags off
# build scripts, which would not link against libFuzzer's hooks.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Ccodegen-units=1 ${RUSTFLAGS:-}"
cargo build --release --manifest-path "$fuzz/Cargo.toml" --target "$triple" \
    --target-dir "$fuzz/target" --config 'profile.release.debug="line-tables-only"' \
    --bin "$target"

corpus="$fuzz/corpus/$target"
artifacts="$fuzz/artifacts/$target"
mkdir -p "$corpus" "$artifacts"

# The targets make their files under $TMPDIR; a crash skips their own clean-up.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/wm-fuzz-$target.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# The C ABI's state lives as long as the process, and every registry it opens stays
# mapped: c_abi runs in libFuzzer's fork mode, a series of fresh processes.
defaults=()
[ "$target" != c_abi ] || defaults=(-fork=1)

before=$(find "$artifacts" -type f | sort)
status=0
TMPDIR="$scratch" "$fuzz/target/$triple/release/$target" \
    -max_total_time="$seconds" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    "${defaults[@]}" "$@" "$corpus" || status=$?
after=$(find "$artifacts" -type f | sort)
found=$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')
if [ "$status" -ne 0 ] || [ -n "$found" ]; then
    echo "fuzz.sh: $target failed (status $status)" >&2
    [ -z "$found" ] || echo "$found" | sed 's/^/fuzz.sh: input: /' >&2
    exit 1
fi
