//! The event journal: a ring of fixed-size entries in the region.
//!
//! Writers hold the registry lock. Readers take no lock: an entry is a seqlock whose
//! sequence number is zeroed before its fields are written and set after, so a
//! reader that sees the same non-zero number before and after copying the fields has
//! a consistent entry, and one overwritten meanwhile is skipped, never mixed.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{fence, AtomicU64};

use crate::crash::crash_point;
use crate::event::{Detail, Encoded, Event};
use crate::lifecycle::StartKind;
use crate::region::layout::{EventRecord, Stat, EVENT_KINDS};
use crate::region::map::Region;

fn entry<A>(region: &Region<A>, seq: u64) -> &EventRecord {
    let cap = u64::from(region.capacities().events);
    region.event((seq % cap) as u32)
}

/// The statistic of the header that counts events like `detail`, if any.
fn statistic(detail: &Detail) -> Option<Stat> {
    Some(match detail {
        Detail::MasterStart { kind, .. } => match kind {
            StartKind::Start => Stat::Starts,
            StartKind::Restart => Stat::Restarts,
            StartKind::Reload => Stat::Reloads,
            StartKind::Upgrade => Stat::Upgrades,
        },
        Detail::WorkerStart {
            replaces: Some(_), ..
        } => Stat::Respawns,
        Detail::WorkerCrash { .. } => Stat::Crashes,
        Detail::GenerationAbort { .. } => Stat::Aborts,
        Detail::WorkerHang { .. } => Stat::Hangs,
        Detail::LockRecovered { .. } => Stat::LockRecoveries,
        _ => return None,
    })
}

/// The generation counter that counts events like `event`, if any.
fn generation_counter<'r>(region: &'r Region, event: &Event) -> Option<&'r AtomicU64> {
    match event.detail {
        Detail::WorkerCrash { .. } => region.find_generation(event.generation).map(|g| &g.crashes),
        _ => None,
    }
}

/// Stores the counters an entry brings: plain stores of the totals it carries, so
/// that applying it twice is applying it once.
fn apply(region: &Region, event: &Event, r: &EventRecord) {
    let h = region.header();
    let kind = event.kind().code() as usize % EVENT_KINDS;
    h.event_totals[kind].store(r.kind_total.load(Relaxed), Relaxed);
    h.event_last_ns[kind].store(r.time_ns.load(Relaxed), Relaxed);
    if let Some(stat) = statistic(&event.detail) {
        h.stats[stat as usize].store(r.stat_total.load(Relaxed), Relaxed);
    }
    if let Some(counter) = generation_counter(region, event) {
        counter.store(r.generation_total.load(Relaxed), Relaxed);
    }
}

/// Appends `event`, giving it the next sequence number, which is returned, and
/// counts it in the header. The caller holds the registry lock.
///
/// The entry is committed once its `seq` is stored: the counters follow, then the
/// head. A writer that dies anywhere after the commit leaves an entry the repair
/// finds at the head and applies again; one that dies before leaves nothing.
pub(crate) fn append(region: &Region, event: &mut Event) -> u64 {
    let h = region.header();
    let seq = h.next_seq.load(Relaxed);
    event.seq = seq;
    let e = event.encode();
    let kind = e.kind as usize % EVENT_KINDS;
    // Saturating: a file may hold any number.
    let next = |counter: &AtomicU64| counter.load(Relaxed).saturating_add(1);
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
    r.kind_total.store(next(&h.event_totals[kind]), Relaxed);
    r.stat_total.store(
        statistic(&event.detail).map_or(0, |s| next(&h.stats[s as usize])),
        Relaxed,
    );
    r.generation_total
        .store(generation_counter(region, event).map_or(0, next), Relaxed);
    r.seq.store(seq, Release);
    crash_point("journal-committed", event.kind());
    apply(region, event, r);
    crash_point("journal-counted", event.kind());
    // Saturating: a file may hold any number (a real journal never gets there).
    h.next_seq.store(seq.saturating_add(1), Release);
    seq
}

/// After the lock's holder died: an entry committed at the head but whose head was
/// not moved is applied (again) and the head moved past it.
pub(crate) fn repair(region: &Region) {
    let h = region.header();
    let seq = h.next_seq.load(Relaxed).max(1);
    let committed = read(region, seq);
    if let Some(event) = &committed {
        apply(region, event, entry(region, seq));
    }
    let next = if committed.is_some() || entry(region, seq).seq.load(Acquire) == seq {
        seq.saturating_add(1)
    } else {
        seq
    };
    h.next_seq.store(next, Release);
}

/// The newest entry, if the ring still holds it and this build can read it.
pub(crate) fn last<A>(region: &Region<A>) -> Option<Event> {
    let next = region.header().next_seq.load(Acquire);
    next.checked_sub(1)
        .filter(|&seq| seq > 0)
        .and_then(|seq| read(region, seq))
}

/// Reads entry `seq` without a lock; `None` if it was overwritten, is being written,
/// or holds codes this build does not know.
fn read<A>(region: &Region<A>, seq: u64) -> Option<Event> {
    let r = entry(region, seq);
    if r.seq.load(Acquire) != seq {
        return None;
    }
    let e = Encoded {
        seq,
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
    Event::decode(&e)
}

/// The events from `from` (inclusive) to the newest, oldest first. Events that the
/// ring has already overwritten are skipped; the first returned may thus be newer
/// than `from`.
pub(crate) fn since<A>(region: &Region<A>, from: u64) -> Vec<Event> {
    let next = region.header().next_seq.load(Acquire);
    let cap = u64::from(region.capacities().events);
    let oldest = next.saturating_sub(cap).max(from).max(1);
    (oldest..next).filter_map(|seq| read(region, seq)).collect()
}
