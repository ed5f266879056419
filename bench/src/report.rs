//! `docs/BENCHMARKS.md`, written from one run's figures.

use std::fmt::Write;
use std::process::Command;

use crate::scenarios::{
    Changes, Contention, Crash, Failover, Handover, Reload, Samples, Stall, Steady, Verdicts,
    JOB_PERIOD, LEADER_CHECK_S,
};

/// One scenario's figures for the product and, when measured, the original.
pub struct Pair<T> {
    pub product: T,
    pub original: Option<T>,
}

impl<T> Pair<T> {
    /// The figures with their tracker's name: the product's, then the original's.
    fn each(&self) -> impl Iterator<Item = (&'static str, &T)> {
        std::iter::once(("worker-manager", &self.product))
            .chain(self.original.as_ref().map(|o| ("original", o)))
    }
}

pub struct Figures {
    pub command: String,
    pub micro: Option<String>,
    pub crash_fast: Pair<Crash>,
    pub crash_default: Pair<Crash>,
    pub reload: Pair<Reload>,
    pub steady: Pair<Steady>,
    /// CPU a worker a tick of nginx alone (a timer that does nothing), µs.
    pub bare_tick_us: f64,
    pub contention: Pair<Contention>,
    pub stall: Pair<Stall>,
    pub verdicts: Verdicts,
    pub failover: Failover,
    pub handover: Handover,
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_string()
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores; Linux {}; {}; libnginx-mod-http-lua {}; {}",
        output("uname", &["-r"]),
        output("/usr/sbin/nginx", &["-v"]).replace("nginx version: ", ""),
        output(
            "dpkg-query",
            &["-W", "-f", "${Version}", "libnginx-mod-http-lua"]
        ),
        output("rustc", &["-V"]),
    )
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 1000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.2} s", v / 1000.0)
    }
}

fn ratio(original: f64, product: f64) -> String {
    if product > 0.0 && original.is_finite() {
        format!("{:.0}x", original / product)
    } else {
        "-".into()
    }
}

fn spread(s: &Samples) -> String {
    format!(
        "{} / {} / {}",
        ms(s.percentile(50.0)),
        ms(s.percentile(95.0)),
        ms(s.max())
    )
}

fn crash_table(out: &mut String, title: &str, pair: &Pair<Crash>) {
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(
        out,
        "| tracker | kill to `worker_crash` callback (p50 / p95 / max) | kill to counts right (p50 / p95 / max) | `n_mine` seen by the respawns ({} workers) |\n| --- | --- | --- | --- |",
        pair.product.workers
    );
    let row = |out: &mut String, name: &str, c: &Crash| {
        let mut seen: Vec<u64> = c.respawn_n_mine.clone();
        seen.sort_unstable();
        seen.dedup();
        let seen: Vec<String> = seen.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            c.to_callback
                .as_ref()
                .map_or("no such callback".into(), spread),
            spread(&c.to_counts),
            seen.join(", ")
        );
    };
    for (name, c) in pair.each() {
        row(out, name, c);
    }
    if let Some(o) = &pair.original {
        let _ = writeln!(
            out,
            "\nCounts right again, p95: the original takes {} the time of worker-manager.",
            ratio(
                o.to_counts.percentile(95.0),
                pair.product.to_counts.percentile(95.0)
            )
        );
    }
    let _ = writeln!(out);
}

/// Says how many reloads lost their old generation's `master_exit`, per tracker.
fn missed<T>(out: &mut String, pair: &Pair<T>, count: impl Fn(&T) -> u32, of: usize) {
    let mut say = |name: &str, n: u32| {
        let _ = writeln!(
            out,
            "{name}: the old generation's `master_exit` fired in {} of {of} reloads{}.\n",
            of as u32 - n,
            if n > 0 {
                " (its workers all exited; the lost callbacks are a defect of the tracker)"
            } else {
                ""
            }
        );
    };
    for (name, t) in pair.each() {
        say(name, count(t));
    }
}

/// "no overlap in N changes", or how many overlapped.
fn overlaps(c: &Changes) -> String {
    match c.overlaps {
        0 => format!("no overlap in {} changes", c.changes),
        n => format!("{n} overlaps in {} changes", c.changes),
    }
}

fn leadership(out: &mut String, failover: &Failover, handover: &Handover) {
    let kills = failover.to_new_leader.0.len();
    let reloads = handover.gap.0.len();
    let _ = writeln!(
        out,
        "## Leadership\n\n\
         {} workers at the defaults (interval 10 s, failed 5 s, `leader_check` {}: not set),\n\
         each running a job: a timer every {} that, when `is_leader()` says the worker\n\
         leads, appends its pid, the term, and the wall-clock time just before the check\n\
         and just after it to a file, in one write. Failover: kill -9 of the leader, {kills}\n\
         times, each once the leader runs the job; from the kill to the first run in\n\
         another worker (the respawn, which takes over in its own registration, then runs\n\
         the job at its timer's first expiry, a period later). Handover: SIGHUP, {reloads}\n\
         times; from the old leader's last run to the new leader's first. The old leader\n\
         resigns when its graceful exit begins (its timers run early), up to a period\n\
         after its last run; the new leader's job sees it at its next run, up to a period\n\
         later, with no wait for `leader_check` (which paces only `on_leader_start` and\n\
         `on_leader_stop` in a worker whose leadership changed elsewhere).\n\n\
         | figure | p50 / p95 / max |\n| --- | --- |\n\
         | failover: kill -9 of the leader to the new leader's first run | {} |\n\
         | handover: the old leader's last run to the new leader's first, at a reload | {} |\n",
        failover.workers,
        ms(LEADER_CHECK_S * 1e3),
        ms(JOB_PERIOD.as_secs_f64() * 1e3),
        spread(&failover.to_new_leader),
        spread(&handover.gap)
    );
    let _ = writeln!(
        out,
        "The new leader was the dead leader's respawn in {} of {kills} kills, and a worker\n\
         of the new generation in {} of {reloads} reloads.\n\n\
         A change overlaps when a run of the earlier term began its `is_leader()` check\n\
         after a run of the later term had been told it leads, or when one term ran in\n\
         two workers: failover, {}; handover, {}.\n",
        failover.to_respawn,
        handover.to_new_generation,
        overlaps(&failover.changes),
        overlaps(&handover.changes)
    );
}

pub fn render(f: &Figures) -> String {
    let mut out = String::new();
    let p = &f;
    let _ = writeln!(
        out,
        "# Benchmarks\n\n\
         Written by `make bench` ({}); every comparison is a ratio of figures from\n\
         that one run, on the same machine and the same nginx.\n\n\
         Machine: {}.\n\n\
         The nginx scenarios run Debian's nginx with the real Lua module, tracked by\n\
         worker-manager (`resty.worker.manager`, configured as the original's synopsis:\n\
         no `exit_worker_by_lua`) or by the original lua-resty-worker-manager given with\n\
         `--baseline`. Times come from the callbacks' own wall-clock timestamps; CPU\n\
         from `/proc/<pid>/schedstat` (nanoseconds); the original's counts, which no\n\
         callback reports after a crash, from its shared dict, polled every 10 ms.\n",
        f.command,
        machine()
    );

    let _ = writeln!(out, "## The goals\n");
    let _ = writeln!(
        out,
        "| goal | worker-manager | original | met |\n| --- | --- | --- | --- |"
    );
    let crash = &p.crash_fast.product;
    let crash_p95 = crash
        .to_callback
        .as_ref()
        .map_or(f64::NAN, |s| s.percentile(95.0));
    let _ = writeln!(
        out,
        "| crash to `worker_crash` callback, p95 < 50 ms | {} | no callback; counts right after {} (p95, interval 1 s) | {} |",
        ms(crash_p95),
        p.crash_fast
            .original
            .as_ref()
            .map_or("-".into(), |o| ms(o.to_counts.percentile(95.0))),
        if crash_p95 < 50.0 { "yes" } else { "no" }
    );
    let st = &p.steady.product;
    let flat = |s: &Steady| s.tick_us.1 / s.tick_us.0;
    // Within the measurement's noise: a tenth of a tick.
    let _ = writeln!(
        out,
        "| heartbeat CPU flat across {} reloads | {:.1} µs then {:.1} µs a tick ({:.2}x) | {} | {} |",
        st.reloads,
        st.tick_us.0,
        st.tick_us.1,
        flat(st),
        p.steady.original.as_ref().map_or("-".into(), |o| format!(
            "{:.1} µs then {:.1} µs a tick ({:.2}x)",
            o.tick_us.0,
            o.tick_us.1,
            flat(o)
        )),
        if flat(st) < 1.1 { "yes" } else { "no" }
    );
    let share = |s: &Stall| 100.0 * s.master_cpu_ms / s.wall_ms;
    let _ = writeln!(
        out,
        "| master CPU while waiting for a stalled lock < 5 % | {:.1} % | {} | {} |",
        share(&p.stall.product),
        p.stall
            .original
            .as_ref()
            .map_or("-".into(), |o| format!("{:.0} %", share(o))),
        if share(&p.stall.product) < 5.0 {
            "yes"
        } else {
            "no"
        }
    );
    let _ = writeln!(
        out,
        "| state size constant over {} reloads | {} then {} bytes | {} | {} |",
        st.reloads,
        st.state_bytes.0,
        st.state_bytes.1,
        p.steady.original.as_ref().map_or("-".into(), |o| format!(
            "{} then {} bytes",
            o.state_bytes.0, o.state_bytes.1
        )),
        if st.state_bytes.0 == st.state_bytes.1 {
            "yes"
        } else {
            "no"
        }
    );
    let v = &p.verdicts;
    for (goal, samples) in [
        (
            "old generation's `master_exit` after its last worker's real exit, p95 < 5 ms",
            &v.master_exit,
        ),
        (
            "failed reload's verdict after nginx's \"still could not bind()\", p95 < 5 ms",
            &v.failed_reload,
        ),
    ] {
        let p95 = samples.percentile(95.0);
        let _ = writeln!(
            out,
            "| {goal} | {} | - | {} |",
            ms(p95),
            if p95 < 5.0 { "yes" } else { "no" }
        );
    }
    let failover_p95 = p.failover.to_new_leader.percentile(95.0);
    let _ = writeln!(
        out,
        "| failover: kill -9 of the leader to the first run of the job in the new leader, p95 < 50 ms | {} | - | {} |",
        ms(failover_p95),
        if failover_p95 < 50.0 { "yes" } else { "no" }
    );
    let gap_max = p.handover.gap.max();
    let gap_goal = LEADER_CHECK_S * 1e3 + 10.0;
    let _ = writeln!(
        out,
        "| handover gap at a reload < leader_check + 10 ms (leader_check {}, the default) | {} (max) | - | {} |",
        ms(LEADER_CHECK_S * 1e3),
        ms(gap_max),
        if gap_max < gap_goal { "yes" } else { "no" }
    );
    let _ = writeln!(out);

    let _ = writeln!(
        out,
        "## Verdicts from the end of the Lua VM\n\n\
         Without `exit_worker_by_lua`, at the default interval (10 s), {} trials each,\n\
         p50 / p95 / max. The old generation's `master_exit` is fired by its last worker\n\
         at its real exit, from the end of its Lua VM, measured from that worker's\n\
         `worker_exit` (the original fires it when shutdown starts, and this product's\n\
         earlier versions from a new worker's tick, up to `interval` later). A reload\n\
         that nginx gives up (a port already in use) is aborted by the master when it\n\
         closes the configuration, measured from the moment an inotify watch of the\n\
         error log saw \"still could not bind()\" (0 when the abort came first;\n\
         earlier versions waited for `start_timeout`, 60 s).\n\n\
         | figure | p50 / p95 / max |\n| --- | --- |\n\
         | `master_exit` after the last old worker's exit | {} |\n\
         | failed reload aborted after \"still could not bind()\" | {} |\n",
        v.master_exit.0.len(),
        spread(&v.master_exit),
        spread(&v.failed_reload)
    );

    leadership(&mut out, &p.failover, &p.handover);

    let _ = writeln!(
        out,
        "## Crash detection\n\nkill -9 of one of {} workers, {} times, one at a time. worker-manager reports the\n\
         death through the kernel's robust-mutex owner-died mark, seen by the respawned\n\
         worker as it registers; the original only notices a missing heartbeat.\n",
        crash.workers,
        crash.to_counts.0.len()
    );
    crash_table(&mut out, "interval = 1 s, failed = 1 s", &p.crash_fast);
    crash_table(
        &mut out,
        "the defaults: interval = 10 s, failed = 5 s",
        &p.crash_default,
    );

    let _ = writeln!(
        out,
        "## Reload\n\nSIGHUP to a node of 4 workers, {} times; from the signal to each callback\n\
         (p50 / p95 / max). worker-manager reports `master_exit` when the old workers\n\
         have really exited (its exit hook); the original when their shutdown starts.\n",
        p.reload.product.to_master_start.0.len()
    );
    let _ = writeln!(
        out,
        "| tracker | to `master_start` | to all new workers started | to the old generation's `master_exit` |\n| --- | --- | --- | --- |"
    );
    let reload_row = |out: &mut String, name: &str, r: &Reload| {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            spread(&r.to_master_start),
            spread(&r.to_workers_started),
            spread(&r.to_master_exit)
        );
    };
    for (name, r) in p.reload.each() {
        reload_row(&mut out, name, r);
    }
    let _ = writeln!(out);
    missed(
        &mut out,
        &p.reload,
        |r| r.missed_master_exit,
        p.reload.product.to_master_start.0.len(),
    );

    let bare = p.bare_tick_us;
    let _ = writeln!(
        out,
        "## Steady cost and memory\n\n{} workers, heartbeat every {} s, idle; CPU of all workers over the\n\
         measuring window (after a 3 s warm-up) divided by the ticks in it, before and\n\
         after {} reloads. nginx\n\
         alone, with a timer that does nothing at the same interval, costs {bare:.1} µs a\n\
         tick (the timer machinery and the wake-up of an idle process, mostly the\n\
         kernel's context switch on this virtual machine); the net figures subtract it.\n\
         State: the registry file for worker-manager (fixed at creation), the JSON\n\
         document in the shared dict for the original.\n",
        st.workers, st.interval, st.reloads
    );
    let _ = writeln!(
        out,
        "| tracker | CPU a worker a tick, after 0 reloads (net) | after {} (net) | state bytes, after 0 reloads | after {} |\n| --- | --- | --- | --- | --- |",
        st.reloads, st.reloads
    );
    let steady_row = |out: &mut String, name: &str, s: &Steady| {
        let _ = writeln!(
            out,
            "| {name} | {:.1} µs ({:.1} µs) | {:.1} µs ({:.1} µs) | {} | {} |",
            s.tick_us.0,
            s.tick_us.0 - bare,
            s.tick_us.1,
            s.tick_us.1 - bare,
            s.state_bytes.0,
            s.state_bytes.1
        );
    };
    for (name, s) in p.steady.each() {
        steady_row(&mut out, name, s);
    }
    if let Some(o) = &p.steady.original {
        let _ = writeln!(
            out,
            "\nAfter {} reloads the original's tick costs {} worker-manager's, net of nginx's\n\
             own timer.",
            st.reloads,
            ratio(o.tick_us.1 - bare, st.tick_us.1 - bare)
        );
    }
    let _ = writeln!(out);
    missed(
        &mut out,
        &p.steady,
        |s| s.missed_master_exit,
        st.reloads as usize,
    );

    let c = &p.contention.product;
    let _ = writeln!(
        out,
        "## The lock under contention\n\n{} workers starting at once, each registering under the lock, {} runs\n\
         (p50 / p95 / max): the time from the first to the last `worker_start` callback, and\n\
         the CPU all workers had used when the last had started.\n",
        c.workers,
        c.spread.0.len()
    );
    let _ = writeln!(
        out,
        "| tracker | first to last `worker_start` | CPU of the workers |\n| --- | --- | --- |"
    );
    let contention_row = |out: &mut String, name: &str, c: &Contention| {
        let _ = writeln!(
            out,
            "| {name} | {} | {} |",
            spread(&c.spread),
            spread(&c.worker_cpu)
        );
    };
    for (name, c) in p.contention.each() {
        contention_row(&mut out, name, c);
    }
    let _ = writeln!(
        out,
        "\nA stalled holder: a respawned worker's `worker_start` callback sleeps 3 s holding\n\
         the lock while the master reloads and waits for the lock in `init_by_lua`\n\
         (where the original cannot sleep, so it spins).\n"
    );
    let _ = writeln!(
        out,
        "| tracker | signal to `master_start` | master CPU meanwhile | share |\n| --- | --- | --- | --- |"
    );
    let stall_row = |out: &mut String, name: &str, s: &Stall| {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {:.1} % |",
            ms(s.wall_ms),
            ms(s.master_cpu_ms),
            share(s)
        );
    };
    for (name, s) in p.stall.each() {
        stall_row(&mut out, name, s);
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## Core microbenchmarks\n");
    match &f.micro {
        Some(text) => {
            let _ = writeln!(
                out,
                "`cargo bench -p worker-manager` (divan, release build). \"history\" is the number of\n\
                 generations that came and went before the measurement: no figure may grow\n\
                 with it. `sweep` runs over 64 and 1024 live workers (real processes).\n\n```\n{}\n```\n",
                text.trim_end()
            );
            out.push_str(MICRO_NOTES);
        }
        None => {
            let _ = writeln!(out, "Not run (`--micro FILE` not given).");
        }
    }
    out
}

const MICRO_NOTES: &str = "\
What the figures include:

- **lock_unlock**: an uncontended `pthread_mutex_trylock` on the robust mutex, the
  holder's pid and operation recorded for diagnostics, the hold time added to the
  counters (two `CLOCK_MONOTONIC` reads through the vDSO), and the unlock.
- **heartbeat**: a `CLOCK_MONOTONIC` read and one atomic store into the worker's own
  slot. No lock, no system call.
- **worker_start_exit**: two locked operations, each with its sweep, its journal
  entry, the counts, and the slot's robust mutex taken and released; each wakes
  journal followers (`worker-manager events --follow`) with a `FUTEX_WAKE` (about
  0.4 µs, paid whether or not anyone follows: a read-only follower cannot announce
  itself). A quiet sweep makes no system call.
- **sweep**: under the lock, the registry decoded into the rules' plain values
  (about 10 ns a live worker: the price of rules that are pure functions), a
  `trylock` of every live worker's slot mutex (a user-space compare-and-swap: a dead
  worker's mutex is marked by the kernel), the heartbeat ages, and the checks of
  deserted and stalled generations. For
  comparison, `kill(pid, 0)` costs about 570 ns on such a machine and reading
  `/proc/<pid>/stat` about 7 µs: a sweep by pid and start time would be 75 to 900
  times slower.
";
