//! `worker-manager events`: the journal, oldest first, as text or JSON lines, and
//! with `--follow` the new events as they are journalled. Following sleeps on the
//! registry's futex (no polling); a wake-up at least every second checks that the
//! file is still the one mapped.

use std::io::Write;
use std::time::Duration;

use worker_manager::{Event, Observer};

use crate::text::timestamp;
use crate::{exit, written, Failure};

/// How often a follower wakes without an event, to check the file.
const RECHECK: Duration = Duration::from_secs(1);

fn line(out: &mut impl Write, e: &Event, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, &e.to_json())?;
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
