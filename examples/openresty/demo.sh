#!/usr/bin/env bash
# `make demo`: a real nginx with resty.worker.manager in a temporary prefix, driven
# through start, reload, reloads nginx gives up or rejects (and `worker-manager
# reload` catching one), kill -9 of a worker, a crash loop, a binary upgrade by
# `worker-manager upgrade`, and stop, printing the events as the callbacks record
# them. Leaves nothing running.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
lib_dir=${LIB_DIR:-$repo/target/debug}
cli=${CLI:-$repo/target/debug/worker-manager}
nginx=/usr/sbin/nginx   # by its absolute path: a binary upgrade re-executes it

prefix=$(mktemp -d /tmp/wm-demo.XXXXXX)
chmod 755 "$prefix"     # the workers run as nobody
mkdir -p "$prefix/conf/extra" "$prefix/logs"
events=$prefix/events.log
: > "$events"
chmod 666 "$events"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@REPO@|$repo|g" -e "s|@LIB_DIR@|$lib_dir|g" \
    "$repo/examples/openresty/nginx.conf.in" > "$prefix/conf/nginx.conf"

masters() { cat "$prefix"/logs/nginx.pid "$prefix"/logs/nginx.pid.oldbin 2>/dev/null || true; }

cleanup() {
    local pids
    pids=$(for m in $(masters); do echo "$m"; pgrep -P "$m" || true; done)
    if [ -n "$pids" ]; then
        kill -9 $pids 2>/dev/null || true
    fi
    rm -rf "$prefix"
}
trap cleanup EXIT

shown=0
show_new() {
    local total
    total=$(wc -l < "$events")
    if [ "$total" -gt "$shown" ]; then
        sed -n "$((shown + 1)),${total}p" "$events"
        shown=$total
    fi
}

# Prints events until COUNT lines match PATTERN (20 s at most).
until_seen() {
    local pattern=$1 count=$2 deadline=$((SECONDS + 20))
    while :; do
        local seen
        seen=$(grep -c -- "$pattern" "$events" || true)
        show_new
        [ "$seen" -ge "$count" ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out waiting for: $pattern" >&2
            cat "$prefix/logs/error.log" >&2
            exit 1
        fi
        sleep 0.05
    done
}

step() { printf '\n== %s\n' "$*"; }

step "start: nginx with 2 workers (daemon on: the first init_by_lua runs in a process that exits)"
"$nginx" -p "$prefix" -c conf/nginx.conf
until_seen "^  worker_start" 2
master=$(cat "$prefix/logs/nginx.pid")

step "reload (SIGHUP): a new generation; the old workers exit with reason=reload"
kill -HUP "$master"
until_seen "^  master_exit" 1

step "a reload that nginx gives up (an error in init_by_lua after the registration): generation_abort cause=failed, the old workers serve on"
touch "$prefix/fail-next-reload"
kill -HUP "$master"
until_seen "cause=failed" 1
rm "$prefix/fail-next-reload"

step "worker-manager reload: a configuration nginx rejects (a syntax error) fails the command with nginx's own line, and the old configuration serves on"
echo "this_is_not_a_directive on;" > "$prefix/conf/extra/broken.conf"
status=0
"$cli" reload --path "$prefix/registry.wm" || status=$?
echo "exit code $status"
if [ "$status" -ne 7 ]; then
    echo "worker-manager reload should have failed with exit code 7" >&2
    exit 1
fi
rm "$prefix/conf/extra/broken.conf"

step "worker-manager reload of the fixed configuration: exit 0 once nginx committed it and its workers started"
"$cli" reload --path "$prefix/registry.wm"
until_seen "^  master_exit" 2

step "kill -9 of a worker: one worker_crash, and the respawn says respawn=true"
victim=$(pgrep -P "$master" | head -n 1)
kill -9 "$victim"
until_seen "respawn=true" 1

step "what an operator sees from outside nginx: worker-manager status (read-only, lock-free)"
"$cli" status --path "$prefix/registry.wm"

step "kill -9 of every worker, six times over: each worker index crashes more than 5 times within 30 s, a crash loop"
respawns=1
for round in 1 2 3 4 5 6; do
    for victim in $(pgrep -P "$master"); do
        kill -9 "$victim"
    done
    respawns=$((respawns + 2))
    until_seen "respawn=true" "$respawns"
done
until_seen "^  crash_loop" 2
"$cli" status --path "$prefix/registry.wm" | grep "CRASH LOOP"

step "binary upgrade with worker-manager upgrade: SIGUSR2, and once the new master's workers serve, SIGWINCH and SIGQUIT to the old one; kind=upgrade, ids go on"
"$cli" upgrade --path "$prefix/registry.wm"
until_seen "reason=upgrade" 3
new_master=$(cat "$prefix/logs/nginx.pid")

step "graceful stop (SIGQUIT): reason=stop, and the last master_exit has n_next=nil"
kill -QUIT "$new_master"
until_seen "reason=stop" 3
while kill -0 "$new_master" 2>/dev/null; do sleep 0.05; done
show_new

step "the journal survives the node: worker-manager events, and a few of its metrics"
"$cli" events --path "$prefix/registry.wm" | tail -n 4
"$cli" metrics --path "$prefix/registry.wm" \
    | grep -E '^worker_manager_(generations_total|worker_crashes_total|worker_respawns_total|last_reload_successful)'
printf '\nnginx stopped; nothing is left running.\n'
