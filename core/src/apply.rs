//! Applying a plan to the mapping: the one place that writes what the rules decide,
//! in the crash-safe order of `docs/design.md` 4.4.
//!
//! Steps are written in the order the plan holds them: an event's journal entry
//! before the effects that follow it, so a holder killed in between leaves an entry
//! the repair finds and whose effects it redoes. Within a record only the fields the
//! step changes are stored (a worker's heartbeat, which it stores without the lock,
//! is never overwritten), and the fields that publish a record come last, with
//! release ordering: a slot's `state`, a generation's `state` then `id` (set on
//! registration, cleared on retirement), the header's `next_generation`.

use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::crash::crash_point;
use crate::event::Event;
use crate::journal;
use crate::lifecycle::WorkerState;
use crate::region::layout::{CrashHistory, GenerationRecord, Header, WorkerSlot};
use crate::region::map::Region;
use crate::rules::{Generation, History, Node, Slot, Step};

/// Writes `steps` in order; returns the events, numbered as journalled.
pub(crate) fn apply(region: &Region, steps: Vec<Step>) -> Vec<Event> {
    let mut events = Vec::new();
    for step in steps {
        match step {
            Step::Journal(mut event) => {
                journal::append(region, &mut event);
                crash_point("after-entry", event.kind());
                events.push(event);
            }
            Step::Node { before, after } => node(region.header(), &before, &after),
            Step::Generation { before, after } => {
                generation(region.generation(after.record), &before, &after)
            }
            Step::Slot { before, after } => slot(region.slot(after.slot), &before, &after),
            Step::History { before, after } => {
                history(region.history(after.index), &before, &after)
            }
        }
    }
    events
}

/// Stores a field if the step changes it, or if `whole` (a record taking a new
/// generation or worker, whose old values were not decoded).
fn set_u32(field: &AtomicU32, before: u32, after: u32, whole: bool) {
    if whole || before != after {
        field.store(after, Relaxed);
    }
}

/// [`set_u32`] for a 64-bit field.
fn set_u64(field: &AtomicU64, before: u64, after: u64, whole: bool) {
    if whole || before != after {
        field.store(after, Relaxed);
    }
}

fn node(h: &Header, before: &Node, after: &Node) {
    set_u64(&h.run_id, before.run_id, after.run_id, false);
    if let (true, Some(run)) = (before.run != after.run, after.run) {
        h.run_state.store(run.code(), Relaxed);
    }
    if after.slot_high_water > before.slot_high_water {
        h.slot_high_water.fetch_max(after.slot_high_water, Relaxed);
    }
    set_u32(&h.verdict, before.verdict, after.verdict, false);
    set_u64(&h.verdict_ns, before.verdict_ns, after.verdict_ns, false);
    set_u64(
        &h.verdict_generation,
        before.verdict_generation,
        after.verdict_generation,
        false,
    );
    set_u64(
        &h.last_success_ns,
        before.last_success_ns,
        after.last_success_ns,
        false,
    );
    set_u64(
        &h.reload_verdicts,
        before.reload_verdicts,
        after.reload_verdicts,
        false,
    );
    set_u64(
        &h.reload_failures,
        before.reload_failures,
        after.reload_failures,
        false,
    );
    set_u32(
        &h.crash_loop_intensity,
        before.crash_loop_intensity,
        after.crash_loop_intensity,
        false,
    );
    set_u64(
        &h.crash_loop_period_ms,
        before.crash_loop_period_ms,
        after.crash_loop_period_ms,
        false,
    );
    set_u32(&h.leader_pid, before.leader_pid, after.leader_pid, false);
    for (field, (&b, &a)) in h
        .leader_changes
        .iter()
        .zip(before.leader_changes.iter().zip(&after.leader_changes))
    {
        set_u64(field, b, a, false);
    }
    // Workers read it without the lock: after the pid it goes with.
    if before.leader != after.leader {
        h.leader.store(after.leader.0, Release);
    }
    if after.history_high_water > before.history_high_water {
        h.history_high_water
            .fetch_max(after.history_high_water, Relaxed);
    }
    if before.next_generation != after.next_generation {
        h.next_generation.store(after.next_generation, Release);
    }
}

fn generation(g: &GenerationRecord, before: &Generation, after: &Generation) {
    let whole = before.id == 0 && after.id != 0;
    set_u32(&g.kind, before.kind, after.kind, whole);
    set_u32(&g.master_pid, before.master.pid, after.master.pid, whole);
    set_u64(
        &g.master_start_time,
        before.master.start_time,
        after.master.start_time,
        whole,
    );
    set_u32(
        &g.expected_workers,
        before.expected_workers,
        after.expected_workers,
        whole,
    );
    set_u64(
        &g.registered_ns,
        before.registered_ns,
        after.registered_ns,
        whole,
    );
    set_u64(
        &g.registered_mono_ns,
        before.registered_mono_ns,
        after.registered_mono_ns,
        whole,
    );
    set_u64(&g.interval_ms, before.interval_ms, after.interval_ms, whole);
    set_u64(&g.failed_ms, before.failed_ms, after.failed_ms, whole);
    set_u64(
        &g.start_timeout_ms,
        before.start_timeout_ms,
        after.start_timeout_ms,
        whole,
    );
    set_u64(
        &g.workers_started,
        before.workers_started,
        after.workers_started,
        whole,
    );
    set_u64(&g.respawns, before.respawns, after.respawns, whole);
    set_u64(&g.crashes, before.crashes, after.crashes, whole);
    set_u32(&g.exit_reason, before.exit_reason, after.exit_reason, whole);
    set_u32(
        &g.previous_run,
        before.previous_run,
        after.previous_run,
        whole,
    );
    set_u64(&g.exited_ns, before.exited_ns, after.exited_ns, whole);
    set_u64(
        &g.committed_ns,
        before.committed_ns,
        after.committed_ns,
        whole,
    );
    if let (true, Some(state)) = (before.state != after.state, after.state) {
        g.state.store(state.code(), Release);
    }
    if before.id != after.id {
        g.id.store(after.id, Release);
    }
}

fn slot(s: &WorkerSlot, before: &Slot, after: &Slot) {
    let whole = before.is(WorkerState::Free) && !after.is(WorkerState::Free);
    set_u32(&s.pid, before.pid, after.pid, whole);
    set_u64(&s.generation, before.generation, after.generation, whole);
    set_u32(&s.index, before.index, after.index, whole);
    set_u32(
        &s.hung,
        u32::from(before.hung),
        u32::from(after.hung),
        whole,
    );
    set_u64(&s.start_time, before.start_time, after.start_time, whole);
    set_u64(
        &s.registered_ns,
        before.registered_ns,
        after.registered_ns,
        whole,
    );
    set_u64(
        &s.heartbeat_mono_ns,
        before.heartbeat_mono_ns,
        after.heartbeat_mono_ns,
        whole,
    );
    set_u64(
        &s.hung_since_mono_ns,
        before.hung_since_mono_ns,
        after.hung_since_mono_ns,
        whole,
    );
    set_u32(
        &s.replaced_pid,
        before.replaced_pid,
        after.replaced_pid,
        whole,
    );
    set_u32(&s.ppid, before.ppid, after.ppid, whole);
    set_u32(&s.respawns, before.respawns, after.respawns, whole);
    set_u32(
        &s.leaving,
        u32::from(before.leaving),
        u32::from(after.leaving),
        whole,
    );
    if let (true, Some(state)) = (before.state != after.state, after.state) {
        s.state.store(state.code(), Release);
    }
}

/// A crash history: the crash's time and worker before the count that makes them
/// part of the history (a reader decodes only `times` below the count).
fn history(r: &CrashHistory, before: &History, after: &History) {
    for (field, (&b, &a)) in r.times.iter().zip(before.times.iter().zip(&after.times)) {
        set_u64(field, b, a, false);
    }
    set_u32(&r.last_pid, before.last_pid, after.last_pid, false);
    set_u64(
        &r.last_generation,
        before.last_generation,
        after.last_generation,
        false,
    );
    set_u64(
        &r.loop_since_ns,
        before.loop_since_ns,
        after.loop_since_ns,
        false,
    );
    set_u32(
        &r.looping,
        u32::from(before.looping),
        u32::from(after.looping),
        false,
    );
    if before.crashes != after.crashes {
        r.crashes.store(after.crashes, Release);
    }
}
