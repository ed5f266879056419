//! `worker-manager events`: the journal, oldest first, as text or JSON lines, and
//! with `--follow` the new events as they are journalled. Following sleeps on the
//! registry's futex (no polling); a wake-up at least every second checks that the
//! file is still the one mapped.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Map, Value};
use worker_manager::clock::unix_seconds;
use worker_manager::{Detail, Event, Observer};

use crate::text::timestamp;
use crate::{exit, written, Failure};

/// How often a follower wakes without an event, to check the file.
const RECHECK: Duration = Duration::from_secs(1);

/// An event as one JSON object: the keys of the Lua `info` table, plus the counts.
fn to_json(e: &Event) -> Value {
    let count = |c: Option<u32>| c.map_or(Value::Null, Value::from);
    let mut o = Map::new();
    o.insert("seq".into(), e.seq.into());
    o.insert("time".into(), unix_seconds(e.time).into());
    o.insert("event".into(), e.kind().as_str().into());
    o.insert("generation".into(), e.generation.into());
    o.insert("id".into(), e.id().into());
    o.insert("n_prev".into(), count(e.counts.prev));
    o.insert("n_mine".into(), e.counts.mine.into());
    o.insert("n_next".into(), count(e.counts.next));
    if let Some(w) = e.worker() {
        o.insert("worker".into(), w.to_string().into());
        o.insert("pid".into(), w.pid.into());
        o.insert("index".into(), w.index.into());
    }
    let detail = match e.detail {
        Detail::MasterStart {
            kind,
            previous_run,
            master_pid,
        } => json!({
            "kind": kind.as_str(),
            "previous_run": previous_run.map(|r| r.as_str()),
            "master_pid": master_pid,
        }),
        Detail::WorkerStart { replaces, .. } => json!({
            "respawn": replaces.is_some(),
            "replaces": replaces.map(|w| w.to_string()),
        }),
        Detail::WorkerExit { reason, .. } | Detail::MasterExit { reason } => {
            json!({ "reason": reason.as_str() })
        }
        Detail::WorkerCrash {
            detection,
            held_lock,
            detected_by,
            ..
        } => json!({
            "detection": detection.as_str(),
            "held_lock": held_lock,
            "detected_by": detected_by,
        }),
        Detail::GenerationAbort { cause } => json!({ "cause": cause.as_str() }),
        Detail::WorkerHang { silent_for, .. } => {
            json!({ "silent_for": silent_for.as_secs_f64() })
        }
        Detail::WorkerRecover { hung_for, .. } => {
            json!({ "hung_for": hung_for.as_secs_f64() })
        }
        Detail::LockRecovered {
            holder_pid,
            holder_op,
        } => json!({ "holder_pid": holder_pid, "holder_op": holder_op.as_str() }),
        // A detail newer than this table: the common keys only.
        _ => json!({}),
    };
    if let Value::Object(fields) = detail {
        o.extend(fields);
    }
    Value::Object(o)
}

fn line(out: &mut impl Write, e: &Event, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, &to_json(e))?;
        writeln!(out)
    } else {
        writeln!(out, "{} {e}", timestamp(e.time))
    }
}

/// Prints the events from `next` on; returns the sequence number after the last
/// one printed. Warns when the ring overwrote events before they could be read.
fn drain(out: &mut impl Write, observer: &Observer, next: u64, json: bool) -> Result<u64, Failure> {
    let events = observer.events_since(next);
    let mut next = next;
    for e in &events {
        if e.seq > next {
            eprintln!(
                "worker-manager: {} events (#{next} to #{}) were overwritten by the journal ring before they could be read",
                e.seq - next,
                e.seq - 1
            );
        }
        written(line(out, e, json))?;
        next = e.seq + 1;
    }
    written(out.flush())?;
    Ok(next)
}

pub fn print(
    out: &mut impl Write,
    observer: &Observer,
    json: bool,
    follow: bool,
) -> Result<(), Failure> {
    let oldest = observer
        .next_seq()
        .saturating_sub(u64::from(observer.capacities().events))
        .max(1);
    let mut next = drain(out, observer, oldest, json)?;
    if !follow {
        return Ok(());
    }
    loop {
        if observer.wait_for_event(next, RECHECK) {
            next = drain(out, observer, next, json)?;
        } else if !observer.is_at_path() {
            return Err(Failure {
                code: exit::FAILURE,
                message: format!(
                    "registry {} was removed or replaced: run again to follow the new one",
                    observer.path().display()
                ),
            });
        }
    }
}
