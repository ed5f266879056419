//! The event journal: a ring of fixed-size entries in the region.
//!
//! Writers hold the registry lock. Readers take no lock: an entry is a seqlock whose
//! sequence number is zeroed before its fields are written and set after, so a
//! reader that sees the same non-zero number before and after copying the fields has
//! a consistent entry, and one overwritten meanwhile is skipped, never mixed.

use std::sync::atomic::fence;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::event::{Encoded, Event};
use crate::region::layout::{EventRecord, EVENT_KINDS};
use crate::region::map::Region;

fn entry(region: &Region, seq: u64) -> &EventRecord {
    let cap = u64::from(region.capacities().events);
    region.event((seq % cap) as u32)
}

/// Appends `event`, giving it the next sequence number, which is returned.
/// The caller holds the registry lock.
pub(crate) fn append(region: &Region, event: &mut Event) -> u64 {
    let h = region.header();
    let seq = h.next_seq.load(Relaxed);
    event.seq = seq;
    let e = event.encode();
    let r = entry(region, seq);
    r.seq.store(0, Relaxed);
    fence(Release);
    r.time_ns.store(e.time_ns, Relaxed);
    r.kind.store(e.kind, Relaxed);
    r.detail.store(e.detail, Relaxed);
    r.generation.store(e.generation, Relaxed);
    r.pid.store(e.pid, Relaxed);
    r.index.store(e.index, Relaxed);
    r.n_prev.store(e.n_prev, Relaxed);
    r.n_mine.store(e.n_mine, Relaxed);
    r.n_next.store(e.n_next, Relaxed);
    r.other_pid.store(e.other_pid, Relaxed);
    r.flags.store(e.flags, Relaxed);
    r.value.store(e.value, Relaxed);
    r.seq.store(seq, Release);
    // Saturating: a file may hold any number (a real journal never gets there).
    h.next_seq.store(seq.saturating_add(1), Release);
    let kind = e.kind as usize % EVENT_KINDS;
    h.event_totals[kind].fetch_add(1, Relaxed);
    h.event_last_ns[kind].store(e.time_ns, Relaxed);
    seq
}

/// After the lock's holder died: an entry whose `seq` was written but whose
/// `next_seq` was not moves `next_seq` on.
pub(crate) fn repair(region: &Region) {
    let h = region.header();
    let seq = h.next_seq.load(Relaxed).max(1);
    let next = if entry(region, seq).seq.load(Acquire) == seq {
        seq.saturating_add(1)
    } else {
        seq
    };
    h.next_seq.store(next, Release);
}

/// Reads entry `seq` without a lock; `None` if it was overwritten, is being written,
/// or holds codes this build does not know.
fn read(region: &Region, seq: u64) -> Option<Event> {
    let r = entry(region, seq);
    if r.seq.load(Acquire) != seq {
        return None;
    }
    let e = Encoded {
        time_ns: r.time_ns.load(Relaxed),
        kind: r.kind.load(Relaxed),
        detail: r.detail.load(Relaxed),
        generation: r.generation.load(Relaxed),
        pid: r.pid.load(Relaxed),
        index: r.index.load(Relaxed),
        n_prev: r.n_prev.load(Relaxed),
        n_mine: r.n_mine.load(Relaxed),
        n_next: r.n_next.load(Relaxed),
        other_pid: r.other_pid.load(Relaxed),
        flags: r.flags.load(Relaxed),
        value: r.value.load(Relaxed),
    };
    fence(Acquire);
    if r.seq.load(Relaxed) != seq {
        return None;
    }
    Event::decode(seq, &e)
}

/// The events from `from` (inclusive) to the newest, oldest first. Events that the
/// ring has already overwritten are skipped; the first returned may thus be newer
/// than `from`.
pub(crate) fn since(region: &Region, from: u64) -> Vec<Event> {
    let next = region.header().next_seq.load(Acquire);
    let cap = u64::from(region.capacities().events);
    let oldest = next.saturating_sub(cap).max(from).max(1);
    (oldest..next).filter_map(|seq| read(region, seq)).collect()
}
