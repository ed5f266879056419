//! `worker-manager status`: the generations and workers of a snapshot, as a table for
//! people or as JSON for scripts. The JSON schema is versioned (`schema`) and
//! documented in `docs/cli.md`: fields are added, never renamed or removed, within
//! a schema version.

use std::io::{self, Write};
use std::time::SystemTime;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use worker_manager::clock::unix_seconds;
use worker_manager::{Counter, CounterValue, Identity, Observer, Snapshot, WorkerState};

use crate::text::{age, since, timestamp};

/// Bumped when a field changes meaning or goes away.
const SCHEMA: u32 = 1;

#[derive(Serialize)]
struct Status<'a> {
    schema: u32,
    registry: Registry<'a>,
    /// False when a writer was changing the registry throughout the reading.
    consistent: bool,
    node_run: NodeRun,
    lock: Option<Lock>,
    next_seq: u64,
    /// nginx's last verdict on a configuration (a start, reload or upgrade).
    last_verdict: Option<Verdict>,
    /// When nginx last committed a configuration.
    last_success: Option<f64>,
    reloads: Reloads,
    crash_loop: CrashLoops,
    /// How long the oldest generation with workers left has been superseded.
    oldest_draining_seconds: Option<f64>,
    leader: Leader,
    generations: Vec<Generation>,
    workers: Vec<Worker>,
    stats: Stats,
    events: Vec<EventTally>,
}

#[derive(Serialize)]
struct Verdict {
    generation: u64,
    /// `committed` or `failed`.
    verdict: &'static str,
    time: f64,
}

/// Verdicts on reloads and upgrades.
#[derive(Serialize)]
struct Reloads {
    total: u64,
    failed: u64,
}

/// The node's leader.
#[derive(Serialize)]
struct Leader {
    /// Its worker id; null when no worker leads.
    worker: Option<String>,
    pid: Option<u32>,
    index: Option<u32>,
    term: u64,
    /// Why it last changed.
    cause: Option<&'static str>,
}

/// The crash-loop rule and the indexes in a loop.
#[derive(Serialize)]
struct CrashLoops {
    intensity: u32,
    period_seconds: f64,
    looping: Vec<CrashLoop>,
}

#[derive(Serialize)]
struct CrashLoop {
    index: u32,
    since: f64,
    last_crashed: String,
    recent_crashes: u32,
}

#[derive(Serialize)]
struct Registry<'a> {
    path: &'a std::path::Path,
    size_bytes: u64,
    created: f64,
    capacities: Capacities,
    previous_boot: bool,
}

#[derive(Serialize)]
struct Capacities {
    generations: u32,
    workers: u32,
    events: u32,
}

#[derive(Serialize)]
struct NodeRun {
    id: u64,
    state: Option<&'static str>,
}

#[derive(Serialize)]
struct Lock {
    holder_pid: u32,
    op: Option<&'static str>,
    held_seconds: f64,
}

#[derive(Serialize)]
struct Generation {
    id: u64,
    kind: Option<&'static str>,
    state: Option<&'static str>,
    previous_run: Option<&'static str>,
    master_pid: u32,
    master_alive: bool,
    started: f64,
    age_seconds: f64,
    live_workers: u32,
    expected_workers: u32,
    workers_started: u64,
    respawns: u64,
    crashes: u64,
    exit_reason: Option<&'static str>,
    exited: Option<f64>,
    /// When the server committed its configuration (`null`: not yet).
    committed: Option<f64>,
    interval_seconds: f64,
    failed_seconds: f64,
}

#[derive(Serialize)]
struct Worker {
    id: String,
    generation: u64,
    index: u32,
    pid: u32,
    state: &'static str,
    process_alive: bool,
    started: f64,
    age_seconds: f64,
    heartbeat_age_seconds: f64,
    hung: bool,
    respawns: u32,
    replaces_pid: Option<u32>,
}

/// The registry's counters, as the core lists them: times in seconds.
struct Stats(Vec<Counter>);

impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for c in &self.0 {
            match c.value {
                CounterValue::Count(n) => map.serialize_entry(c.name, &n)?,
                CounterValue::Time(d) => map.serialize_entry(c.name, &d.as_secs_f64())?,
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct EventTally {
    event: &'static str,
    total: u64,
    last: Option<f64>,
}

fn generations(s: &Snapshot) -> Vec<Generation> {
    s.generations
        .iter()
        .map(|g| {
            // With nginx's `daemon on`, the first generation's recorded master is
            // the pre-daemon process, gone; its live master is its workers' parent.
            let master = s.live_master(g);
            Generation {
                id: g.id,
                kind: g.kind.map(|k| k.as_str()),
                state: g.state.map(|k| k.as_str()),
                previous_run: g.previous_run.map(|r| r.as_str()),
                master_pid: master.map_or(g.master_pid, |m| m.pid),
                master_alive: master.is_some(),
                started: unix_seconds(g.registered),
                age_seconds: since(g.registered).as_secs_f64(),
                live_workers: g.live_workers,
                expected_workers: g.expected_workers,
                workers_started: g.workers_started,
                respawns: g.respawns,
                crashes: g.crashes,
                exit_reason: g.exit_reason.map(|r| r.as_str()),
                exited: g.exited.map(unix_seconds),
                committed: g.committed.map(unix_seconds),
                interval_seconds: g.interval.as_secs_f64(),
                failed_seconds: g.failed.as_secs_f64(),
            }
        })
        .collect()
}

fn workers(s: &Snapshot) -> Vec<Worker> {
    s.workers
        .iter()
        .map(|w| Worker {
            id: w.id.to_string(),
            generation: w.id.generation,
            index: w.id.index,
            pid: w.id.pid,
            state: w.state.as_str(),
            process_alive: w.state != WorkerState::Dead
                && Identity {
                    pid: w.id.pid,
                    start_time: w.start_time,
                }
                .is_alive(),
            started: unix_seconds(w.registered),
            age_seconds: since(w.registered).as_secs_f64(),
            heartbeat_age_seconds: w.heartbeat_age.as_secs_f64(),
            hung: w.hung,
            respawns: w.respawns,
            replaces_pid: w.replaces_pid,
        })
        .collect()
}

/// What to tell people when the reading is not consistent.
pub fn inconsistency(s: &Snapshot) -> String {
    format!(
        "warning: a writer stayed in the middle of a change while reading (the lock is {}); \
         the figures may be mixed: run again, and if this persists the writer died and \
         the next lifecycle event repairs the registry",
        lock(s)
    )
}

/// The lock's state: `free`, or who holds it, for what, and for how long.
fn lock(s: &Snapshot) -> String {
    match s.lock {
        Some(l) => format!(
            "held by pid {} ({}) for {}",
            l.pid,
            l.op.map_or("?", |op| op.as_str()),
            age(l.held_for)
        ),
        None => "free".into(),
    }
}

pub fn json(out: &mut impl Write, observer: &Observer, s: &Snapshot) -> io::Result<()> {
    let caps = s.capacities;
    let status = Status {
        schema: SCHEMA,
        registry: Registry {
            path: observer.path(),
            size_bytes: observer.size(),
            created: unix_seconds(s.created),
            capacities: Capacities {
                generations: caps.generations,
                workers: caps.workers,
                events: caps.events,
            },
            previous_boot: s.previous_boot,
        },
        consistent: s.consistent,
        node_run: NodeRun {
            id: s.run_id,
            state: s.run_state.map(|r| r.as_str()),
        },
        lock: s.lock.map(|l| Lock {
            holder_pid: l.pid,
            op: l.op.map(|op| op.as_str()),
            held_seconds: l.held_for.as_secs_f64(),
        }),
        next_seq: s.next_seq,
        last_verdict: s.verdict.map(|v| Verdict {
            generation: v.generation,
            verdict: verdict_name(v.committed),
            time: unix_seconds(v.time),
        }),
        last_success: s.last_success.map(unix_seconds),
        reloads: Reloads {
            total: s.reload_verdicts,
            failed: s.reload_failures,
        },
        crash_loop: CrashLoops {
            intensity: s.crash_loop_intensity,
            period_seconds: s.crash_loop_period.as_secs_f64(),
            looping: s
                .crash_loops
                .iter()
                .map(|l| CrashLoop {
                    index: l.index,
                    since: unix_seconds(l.since),
                    last_crashed: l.last_crashed.to_string(),
                    recent_crashes: l.recent_crashes,
                })
                .collect(),
        },
        oldest_draining_seconds: s
            .oldest_draining(SystemTime::now())
            .map(|d| d.as_secs_f64()),
        leader: Leader {
            worker: s.leader.map(|w| w.to_string()),
            pid: s.leader.map(|w| w.pid),
            index: s.leader.map(|w| w.index),
            term: s.leader_term,
            cause: s.leader_cause.map(|c| c.as_str()),
        },
        generations: generations(s),
        workers: workers(s),
        stats: Stats(s.stats.counters()),
        events: s
            .events
            .iter()
            .map(|e| EventTally {
                event: e.kind.as_str(),
                total: e.total,
                last: e.last.map(unix_seconds),
            })
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *out, &status)?;
    writeln!(out)
}

fn verdict_name(committed: bool) -> &'static str {
    if committed {
        "committed"
    } else {
        "failed"
    }
}

/// Columns padded to their widest cell.
fn columns(out: &mut impl Write, rows: &[Vec<String>]) -> io::Result<()> {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let last = row.len() - 1;
        for (c, cell) in row.iter().enumerate() {
            if c == last {
                writeln!(out, "{cell}")?;
            } else {
                write!(out, "{cell:<w$}  ", w = widths[c])?;
            }
        }
    }
    Ok(())
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

pub fn table(out: &mut impl Write, observer: &Observer, s: &Snapshot) -> io::Result<()> {
    writeln!(
        out,
        "registry  {} ({} bytes, created {})",
        observer.path().display(),
        observer.size(),
        timestamp(s.created)
    )?;
    if s.previous_boot {
        writeln!(
            out,
            "          written before the last reboot: every process it records is gone"
        )?;
    }
    writeln!(
        out,
        "node run  {} ({}); lock {}; {} events journalled",
        s.run_id,
        s.run_state.map_or("unknown", |r| r.as_str()),
        lock(s),
        s.next_seq - 1
    )?;
    if let Some(v) = s.verdict {
        writeln!(
            out,
            "verdict   generation {} {} at {}",
            v.generation,
            verdict_name(v.committed),
            timestamp(v.time)
        )?;
    }
    if s.leader_term > 0 {
        let cause = s.leader_cause.map_or("?", |c| c.as_str());
        match s.leader {
            Some(w) => writeln!(
                out,
                "leader    {w} (index {}), term {}, since a change by {cause}",
                w.index, s.leader_term
            )?,
            None => writeln!(
                out,
                "leader    none (term {}, last change by {cause})",
                s.leader_term
            )?,
        }
    }
    if s.reload_verdicts > 0 {
        writeln!(
            out,
            "reloads   {} ({} failed)",
            s.reload_verdicts, s.reload_failures
        )?;
    }
    if let Some(d) = s.oldest_draining(SystemTime::now()) {
        writeln!(out, "draining  old workers superseded {} ago", age(d))?;
    }
    for l in &s.crash_loops {
        writeln!(
            out,
            "CRASH LOOP worker index {} since {} ({} crashes within {}; last {})",
            l.index,
            timestamp(l.since),
            l.recent_crashes,
            age(s.crash_loop_period),
            l.last_crashed
        )?;
    }
    writeln!(out)?;
    let gens = generations(s);
    if gens.is_empty() {
        writeln!(out, "no generations")?;
    } else {
        let mut rows = vec![header(&[
            "GENERATION",
            "KIND",
            "STATE",
            "MASTER",
            "AGE",
            "WORKERS",
            "RESPAWNS",
            "CRASHES",
        ])];
        for g in &gens {
            let state = match (g.state, g.committed) {
                (Some("starting"), None) => "loading".to_string(),
                (state, _) => state.unwrap_or("?").to_string(),
            };
            let master = if g.master_alive {
                g.master_pid.to_string()
            } else {
                format!("{} (gone)", g.master_pid)
            };
            let expected = match g.expected_workers {
                0 => "?".to_string(),
                n => n.to_string(),
            };
            rows.push(vec![
                g.id.to_string(),
                g.kind.unwrap_or("?").into(),
                state,
                master,
                age(std::time::Duration::from_secs_f64(g.age_seconds)),
                format!("{}/{expected}", g.live_workers),
                g.respawns.to_string(),
                g.crashes.to_string(),
            ]);
        }
        columns(out, &rows)?;
    }
    writeln!(out)?;
    let ws = workers(s);
    if ws.is_empty() {
        return writeln!(out, "no workers");
    }
    let mut rows = vec![header(&[
        "WORKER",
        "INDEX",
        "PID",
        "STATE",
        "AGE",
        "HEARTBEAT",
        "RESPAWNS",
        "PROCESS",
    ])];
    for w in &ws {
        let state = if w.hung {
            format!("{} (hung)", w.state)
        } else {
            w.state.to_string()
        };
        let process = match (w.process_alive, w.state) {
            (true, _) => "alive",
            (false, "dead") => "gone",
            (false, _) => "gone, not yet swept",
        };
        let heartbeat = if w.state == "running" {
            format!(
                "{} ago",
                age(std::time::Duration::from_secs_f64(w.heartbeat_age_seconds))
            )
        } else {
            "-".into()
        };
        rows.push(vec![
            w.id.clone(),
            w.index.to_string(),
            w.pid.to_string(),
            state,
            age(std::time::Duration::from_secs_f64(w.age_seconds)),
            heartbeat,
            w.respawns.to_string(),
            process.into(),
        ]);
    }
    columns(out, &rows)
}
