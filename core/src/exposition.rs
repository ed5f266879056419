//! The registry in the Prometheus text exposition format (version 0.0.4), for the
//! CLI's `metrics` and the Lua module's `metrics()`: the same text from both, so a
//! fleet is scraped the same way whichever way in is used. Metric names are stable;
//! README.md lists them.

use std::fmt::{Display, Write};
use std::path::Path;
use std::time::SystemTime;

use crate::clock::unix_seconds;
use crate::lifecycle::WorkerState;
use crate::region::layout::LAYOUT_VERSION;
use crate::snapshot::{CounterValue, Snapshot};

/// Renders `snapshot`, read from the registry at `path`.
pub fn prometheus(snapshot: &Snapshot, path: &Path) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    let s = snapshot;

    out.family(
        "registry_info",
        "gauge",
        "The registry file and its layout version.",
    );
    out.sample(
        "registry_info",
        &[
            ("path", &path.display().to_string()),
            ("layout_version", &LAYOUT_VERSION.to_string()),
        ],
        1,
    );
    out.family(
        "registry_capacity",
        "gauge",
        "Records per table, fixed when the registry was created.",
    );
    let caps = s.capacities;
    for (table, n) in [
        ("generations", caps.generations),
        ("workers", caps.workers),
        ("events", caps.events),
    ] {
        out.sample("registry_capacity", &[("table", table)], n);
    }
    out.family(
        "registry_used",
        "gauge",
        "Records in use: tracked generations, and worker slots of live workers and of dead ones not yet retired.",
    );
    out.sample(
        "registry_used",
        &[("table", "generations")],
        s.generations.len(),
    );
    out.sample("registry_used", &[("table", "workers")], s.workers.len());
    out.family(
        "snapshot_consistent",
        "gauge",
        "1 when the figures come from one consistent reading; 0 when a writer died in the middle of a change.",
    );
    out.sample("snapshot_consistent", &[], u8::from(s.consistent));
    out.family(
        "node_run_info",
        "gauge",
        "The current node run (from a start with nothing running until the last generation is gone) and its state.",
    );
    let run_state = s.run_state.map_or("unknown", |r| r.as_str());
    out.sample(
        "node_run_info",
        &[("run", &s.run_id.to_string()), ("state", run_state)],
        1,
    );

    if let Some(v) = s.verdict {
        out.family(
            "last_reload_successful",
            "gauge",
            "1 when nginx committed the last configuration it loaded (a start, reload or upgrade); 0 when it gave it up after init_by_lua, or it never got a worker.",
        );
        out.sample("last_reload_successful", &[], u8::from(v.committed));
        out.family(
            "last_reload_timestamp_seconds",
            "gauge",
            "When nginx gave its verdict on the last configuration it loaded.",
        );
        out.sample("last_reload_timestamp_seconds", &[], unix_seconds(v.time));
    }
    if let Some(t) = s.last_success {
        out.family(
            "last_reload_success_timestamp_seconds",
            "gauge",
            "When nginx last committed a configuration it loaded.",
        );
        out.sample(
            "last_reload_success_timestamp_seconds",
            &[],
            unix_seconds(t),
        );
    }
    out.family(
        "reloads_total",
        "counter",
        "Reloads and binary upgrades that nginx gave a verdict on (committed or failed).",
    );
    out.sample("reloads_total", &[], s.reload_verdicts);
    out.family(
        "reload_failures_total",
        "counter",
        "Reloads and binary upgrades whose configuration nginx gave up after init_by_lua, or that never got a worker.",
    );
    out.sample("reload_failures_total", &[], s.reload_failures);
    out.family(
        "oldest_draining_generation_age_seconds",
        "gauge",
        "How long the oldest generation that still has workers has been superseded by a committed configuration (workers of an old configuration that linger); 0 when none.",
    );
    out.sample(
        "oldest_draining_generation_age_seconds",
        &[],
        s.oldest_draining(SystemTime::now())
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    out.family(
        "workers_crash_looping",
        "gauge",
        "Worker indexes in a crash loop: more than the crash-loop intensity of crashes within its period.",
    );
    out.sample("workers_crash_looping", &[], s.crash_loops.len());
    out.family(
        "leader_term",
        "gauge",
        "Leadership changes so far: it grows at every change of the node's leader.",
    );
    out.sample("leader_term", &[], s.leader_term);
    out.family(
        "leader_info",
        "gauge",
        "The node's leader (absent when no worker leads).",
    );
    if let Some(w) = s.leader {
        out.sample(
            "leader_info",
            &[
                ("worker", &w.to_string()),
                ("generation", &w.generation.to_string()),
                ("index", &w.index.to_string()),
            ],
            1,
        );
    }
    out.family(
        "leader_changes_total",
        "counter",
        "Leadership changes by cause: start, reload, upgrade, death, hang, exit.",
    );
    for &(cause, n) in &s.leader_changes {
        out.sample("leader_changes_total", &[("cause", cause.as_str())], n);
    }

    out.family(
        "generation_info",
        "gauge",
        "One series per tracked generation (one loaded configuration).",
    );
    for g in &s.generations {
        let text = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
        out.sample(
            "generation_info",
            &[
                ("generation", &g.id.to_string()),
                ("kind", &text(g.kind.map(|k| k.to_string()))),
                ("state", &text(g.state.map(|k| k.to_string()))),
                ("master_pid", &g.master_pid.to_string()),
            ],
            1,
        );
    }
    out.family(
        "generation_start_timestamp_seconds",
        "gauge",
        "When the generation was registered.",
    );
    for g in &s.generations {
        out.sample(
            "generation_start_timestamp_seconds",
            &[("generation", &g.id.to_string())],
            unix_seconds(g.registered),
        );
    }
    out.family(
        "generation_expected_workers",
        "gauge",
        "Workers the generation's master said it would start (0: not said).",
    );
    for g in &s.generations {
        out.sample(
            "generation_expected_workers",
            &[("generation", &g.id.to_string())],
            g.expected_workers,
        );
    }
    out.family(
        "generation_workers",
        "gauge",
        "Worker slots of a generation by state: running (counted in n_mine), exiting (announced, process still alive), dead (crashed, awaiting respawn or retirement).",
    );
    for g in &s.generations {
        for state in [
            WorkerState::Running,
            WorkerState::Exiting,
            WorkerState::Dead,
        ] {
            let n = s
                .workers
                .iter()
                .filter(|w| w.id.generation == g.id && w.state == state)
                .count();
            out.sample(
                "generation_workers",
                &[("generation", &g.id.to_string()), ("state", state.as_str())],
                n,
            );
        }
    }
    out.family(
        "worker_heartbeat_age_seconds",
        "gauge",
        "Time since each running worker's last heartbeat.",
    );
    for w in s.live_workers() {
        out.sample(
            "worker_heartbeat_age_seconds",
            &[
                ("worker", &w.id.to_string()),
                ("generation", &w.id.generation.to_string()),
                ("index", &w.id.index.to_string()),
            ],
            w.heartbeat_age.as_secs_f64(),
        );
    }
    out.family(
        "workers_hung",
        "gauge",
        "Running workers whose heartbeat is overdue by more than the generation's `failed` time.",
    );
    out.sample(
        "workers_hung",
        &[],
        s.live_workers().filter(|w| w.hung).count(),
    );

    let mut family = "";
    for counter in s.stats.counters() {
        if counter.metric != family {
            family = counter.metric;
            out.family(family, "counter", counter.help);
        }
        let labels = counter.label.as_slice();
        match counter.value {
            CounterValue::Count(n) => out.sample(family, labels, n),
            CounterValue::Time(d) => out.sample(family, labels, d.as_secs_f64()),
        }
    }
    out.family(
        "lock_held_seconds",
        "gauge",
        "How long the current holder has held the registry lock; 0 when it is free.",
    );
    out.sample(
        "lock_held_seconds",
        &[],
        s.lock.map_or(0.0, |l| l.held_for.as_secs_f64()),
    );

    out.family(
        "events_total",
        "counter",
        "Lifecycle events journalled, by kind.",
    );
    for e in &s.events {
        out.sample("events_total", &[("event", e.kind.as_str())], e.total);
    }
    out.family(
        "last_event_timestamp_seconds",
        "gauge",
        "When the last event of each kind happened (kinds that never happened are absent).",
    );
    for e in &s.events {
        if let Some(last) = e.last {
            out.sample(
                "last_event_timestamp_seconds",
                &[("event", e.kind.as_str())],
                unix_seconds(last),
            );
        }
    }
    out.0
}

struct Exposition(String);

impl Exposition {
    const PREFIX: &'static str = "worker_manager_";

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let p = Self::PREFIX;
        // Help text is ours: no backslash or line feed to escape.
        let _ = writeln!(self.0, "# HELP {p}{name} {help}");
        let _ = writeln!(self.0, "# TYPE {p}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(Self::PREFIX);
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(label);
                self.0.push_str("=\"");
                for c in text.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition(String::new());
        out.sample("x", &[("path", "a\"b\\c\nd")], 1);
        assert_eq!(out.0, "worker_manager_x{path=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
