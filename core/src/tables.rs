//! Reading the region's tables: the records in use, and the whole registry decoded
//! into the rules' [`State`]. The registry reads them under its lock; the observer
//! reads them outside it, inside a change-sequence read (`change`), which makes the
//! copy consistent.

use std::sync::atomic::Ordering::{Acquire, Relaxed};

use crate::event::WorkerId;
use crate::leader::LeaderWord;
use crate::lifecycle::{GenerationState, RunState, WorkerState};
use crate::process::Identity;
use crate::region::layout::{CrashHistory, GenerationRecord, WorkerSlot};
use crate::region::map::Region;
use crate::rules::{Generation, History, Node, Slot, State};

pub(crate) fn load_state(g: &GenerationRecord) -> Option<GenerationState> {
    GenerationState::from_code(g.state.load(Relaxed))
}

pub(crate) fn worker_id(slot: &WorkerSlot) -> WorkerId {
    WorkerId {
        generation: slot.generation.load(Relaxed),
        pid: slot.pid.load(Relaxed),
        index: slot.index.load(Relaxed),
    }
}

/// A record in use, decoded whole (a free one is only listed as free: a
/// registration into it writes every field, see `apply`).
fn generation(record: u32, id: u64, g: &GenerationRecord) -> Generation {
    Generation {
        record,
        id,
        state: load_state(g),
        kind: g.kind.load(Relaxed),
        master: Identity {
            pid: g.master_pid.load(Relaxed),
            start_time: g.master_start_time.load(Relaxed),
        },
        expected_workers: g.expected_workers.load(Relaxed),
        registered_ns: g.registered_ns.load(Relaxed),
        registered_mono_ns: g.registered_mono_ns.load(Relaxed),
        interval_ms: g.interval_ms.load(Relaxed),
        failed_ms: g.failed_ms.load(Relaxed),
        start_timeout_ms: g.start_timeout_ms.load(Relaxed),
        workers_started: g.workers_started.load(Relaxed),
        respawns: g.respawns.load(Relaxed),
        crashes: g.crashes.load(Relaxed),
        exit_reason: g.exit_reason.load(Relaxed),
        previous_run: g.previous_run.load(Relaxed),
        exited_ns: g.exited_ns.load(Relaxed),
        committed_ns: g.committed_ns.load(Relaxed),
    }
}

/// A slot in use (or a tombstone), decoded whole; a free one only as free: a
/// registration into it writes every field (see `apply`).
fn slot(i: u32, s: &WorkerSlot) -> Slot {
    let state = WorkerState::from_code(s.state.load(Acquire));
    if state == Some(WorkerState::Free) {
        return Slot {
            slot: i,
            state,
            ..Slot::default()
        };
    }
    Slot {
        slot: i,
        state,
        pid: s.pid.load(Relaxed),
        generation: s.generation.load(Relaxed),
        index: s.index.load(Relaxed),
        hung: s.hung.load(Relaxed) != 0,
        start_time: s.start_time.load(Relaxed),
        registered_ns: s.registered_ns.load(Relaxed),
        heartbeat_mono_ns: s.heartbeat_mono_ns.load(Acquire),
        hung_since_mono_ns: s.hung_since_mono_ns.load(Relaxed),
        replaced_pid: s.replaced_pid.load(Relaxed),
        ppid: s.ppid.load(Relaxed),
        respawns: s.respawns.load(Relaxed),
        leaving: s.leaving.load(Relaxed) != 0,
    }
}

/// The registry decoded into `state`, reusing its memory (an operation decodes the
/// registry each time, a sweep on every tick of every worker): the generation
/// records in use and the free ones, and the slots up to the high-water mark plus
/// one (the first never used, where a registration goes when no used slot is free).
pub(crate) fn decode_into(region: &Region, state: &mut State) {
    let h = region.header();
    let caps = region.capacities();
    let slot_high_water = h.slot_high_water.load(Relaxed);
    let high_water = slot_high_water.min(caps.workers);
    state.node = Node {
        run: RunState::from_code(h.run_state.load(Relaxed)),
        run_id: h.run_id.load(Relaxed),
        next_generation: h.next_generation.load(Relaxed),
        slot_high_water,
        verdict_generation: h.verdict_generation.load(Relaxed),
        verdict: h.verdict.load(Relaxed),
        verdict_ns: h.verdict_ns.load(Relaxed),
        last_success_ns: h.last_success_ns.load(Relaxed),
        reload_verdicts: h.reload_verdicts.load(Relaxed),
        reload_failures: h.reload_failures.load(Relaxed),
        crash_loop_intensity: h.crash_loop_intensity.load(Relaxed),
        crash_loop_period_ms: h.crash_loop_period_ms.load(Relaxed),
        history_high_water: h.history_high_water.load(Relaxed),
        leader: LeaderWord(h.leader.load(Relaxed)),
        leader_pid: h.leader_pid.load(Relaxed),
        leader_changes: std::array::from_fn(|i| h.leader_changes[i].load(Relaxed)),
    };
    state.generations.clear();
    state.free.clear();
    for i in 0..caps.generations {
        let g = region.generation(i);
        match g.id.load(Acquire) {
            0 => state.free.push(i),
            id => state.generations.push(generation(i, id, g)),
        }
    }
    state.slots.clear();
    state
        .slots
        .extend((0..(high_water + 1).min(caps.workers)).map(|i| slot(i, region.slot(i))));
    state.slot_capacity = caps.workers;
    state.histories.clear();
    state.histories.extend(
        (0..state.node.history_high_water.min(caps.workers))
            .filter_map(|i| history(i, region.history(i))),
    );
}

/// The crash history of worker index `i`, if it ever crashed.
pub(crate) fn history(i: u32, r: &CrashHistory) -> Option<History> {
    let crashes = r.crashes.load(Acquire);
    if crashes == 0 {
        return None;
    }
    Some(History {
        index: i,
        crashes,
        last_pid: r.last_pid.load(Relaxed),
        last_generation: r.last_generation.load(Relaxed),
        looping: r.looping.load(Relaxed) != 0,
        loop_since_ns: r.loop_since_ns.load(Relaxed),
        times: std::array::from_fn(|k| r.times[k].load(Relaxed)),
    })
}

impl<A> Region<A> {
    /// The leader word: one atomic load.
    pub(crate) fn leader_word(&self) -> LeaderWord {
        LeaderWord(self.header().leader.load(Acquire))
    }

    /// The leader word, and the leader: the worker in the slot it names, if that slot
    /// still holds the leader's process.
    pub(crate) fn leader(&self) -> (Option<WorkerId>, LeaderWord) {
        let h = self.header();
        let word = self.leader_word();
        let leader = word
            .slot()
            .filter(|&s| s < self.capacities().workers)
            .map(|s| worker_id(self.slot(s)))
            .filter(|w| w.pid == h.leader_pid.load(Relaxed));
        (leader, word)
    }

    pub(crate) fn generations(&self) -> impl Iterator<Item = &GenerationRecord> {
        (0..self.capacities().generations)
            .map(|i| self.generation(i))
            .filter(|g| g.id.load(Relaxed) != 0)
    }

    pub(crate) fn find_generation(&self, id: u64) -> Option<&GenerationRecord> {
        self.generations().find(|g| g.id.load(Relaxed) == id)
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = (u32, &WorkerSlot)> {
        let h = self.header();
        let end = h
            .slot_high_water
            .load(Relaxed)
            .min(self.capacities().workers);
        (0..end).map(|i| (i, self.slot(i)))
    }
}
