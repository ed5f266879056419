#!/usr/bin/env bash
# Memory errors, with valgrind's memcheck: the core's process tests (the test
# processes and every wm-probe they start), then real-nginx scenarios (master and
# workers, through start, kill -9, reloads and a binary upgrade). Fails on any invalid
# access, use of uninitialised memory, bad free or definite leak in any process;
# nginx's own leaks at worker start are suppressed (scripts/valgrind/nginx.supp).
set -euo pipefail
cd "$(dirname "$0")/.."

logs="$PWD/target/valgrind"
rm -rf "$logs"
mkdir -p "$logs"
# valgrind runs one thread of a process at a time; with its default lock, a thread
# that loops (the observer test's reader) takes it back at once and starves the others
# for minutes. --fair-sched=yes hands it over in turn.
memcheck="valgrind --fair-sched=yes --trace-children=yes --leak-check=full --errors-for-leak-kinds=definite \
--num-callers=40 --suppressions=$PWD/scripts/valgrind/nginx.supp"

host=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
echo "== the core's process tests under memcheck"
# System tools the tests run (mount, chown) are not followed.
env "CARGO_TARGET_${host}_RUNNER=$memcheck --log-file=$logs/process.%p.log \
--trace-children-skip=/bin/*,/sbin/*,/usr/bin/*,/usr/sbin/*" \
    cargo test -p wm-tests --test lifecycle --test crash --test crash_points \
    --test pid_reuse --test observer --test bad_input --test verdicts --test two_vms

echo "== the C ABI's tests under memcheck"
env "CARGO_TARGET_${host}_RUNNER=$memcheck --log-file=$logs/abi.%p.log" \
    cargo test -p worker-manager-ffi --test abi

echo "== nginx under memcheck"
WM_NGINX_WRAPPER="$memcheck --log-file=$logs/nginx.%p.log" \
    cargo test -p wm-tests --test nginx -- \
    start_with_one_and_four_workers kill_9_of_a_worker reloads_including binary_upgrade \
    a_reload_that_fails_after_init_by_lua callbacks_at_the_real_exit

processes=$(find "$logs" -name '*.log' | wc -l)
failed=$(grep -lE 'ERROR SUMMARY: [1-9]|Invalid (read|write|free)|uninitialised|Mismatched free|definitely lost in|Syscall param|Jump to the invalid|default action of signal (4|6|7|8|11) ' \
    "$logs"/*.log || true)
if [ -n "$failed" ]; then
    echo "memcheck found errors in:" $failed >&2
    exit 1
fi
nginx=$(find "$logs" -name 'nginx.*.log' | wc -l)
echo "memcheck: $processes processes ($nginx of nginx), no error"
