#!/usr/bin/env bash
# bounded.sh LIMIT COMMAND...: runs COMMAND, and fails loudly if it is still running
# after LIMIT (timeout(1)'s syntax: 90s, 15m): a hang must fail the run, never stall it.
set -uo pipefail
limit=$1
shift
timeout --kill-after=30s "$limit" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "TIMED OUT after $limit: $*" >&2
fi
exit "$rc"
