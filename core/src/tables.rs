//! Reading the region's tables: the records in use and the census of workers per
//! generation. The registry reads them under its lock; the observer reads them
//! outside it, inside a change-sequence read (`change`), which makes the copy
//! consistent.

use std::sync::atomic::Ordering::Relaxed;

use crate::event::{Counts, WorkerId};
use crate::lifecycle::{GenerationState, WorkerState};
use crate::region::layout::{GenerationRecord, WorkerSlot};
use crate::region::map::Region;

/// Per generation, ordered by id: its live (Running) workers, its present ones
/// (Running, or Exiting: announced their exit but still alive), and whether the
/// server committed it.
pub(crate) struct Census(Vec<Tally>);

#[derive(Clone, Copy)]
struct Tally {
    id: u64,
    live: u32,
    present: u32,
    committed: bool,
}

impl Census {
    fn tally(&self, generation: u64) -> Option<&Tally> {
        self.0.iter().find(|t| t.id == generation)
    }

    pub(crate) fn live(&self, generation: u64) -> u32 {
        self.tally(generation).map_or(0, |t| t.live)
    }

    pub(crate) fn present(&self, generation: u64) -> u32 {
        self.tally(generation).map_or(0, |t| t.present)
    }

    /// The census once a running worker of `generation` is gone: for the counts of
    /// its crash, journalled before the registry marks it dead.
    pub(crate) fn without_running(mut self, generation: u64) -> Census {
        if let Some(t) = self.0.iter_mut().find(|t| t.id == generation) {
            t.live = t.live.saturating_sub(1);
            t.present = t.present.saturating_sub(1);
        }
        self
    }

    /// The census once `generation` is retired: for the counts of its abort.
    pub(crate) fn without(mut self, generation: u64) -> Census {
        self.0.retain(|t| t.id != generation);
        self
    }

    /// The newest committed generation: a configuration the server has not committed
    /// (a reload in progress, or one that failed) replaces nothing yet.
    pub(crate) fn newest(&self) -> u64 {
        self.0
            .iter()
            .rev()
            .find(|t| t.committed)
            .map_or(0, |t| t.id)
    }

    /// The counts for an event of `generation`. Neighbours are the tracked
    /// generations: those with a process left, and the newest committed one. A
    /// generation the server has not committed has no process, so it is never one.
    pub(crate) fn counts(&self, generation: u64, mine: u32) -> Counts {
        let newest = self.newest();
        let tracked = |t: &&Tally| t.present > 0 || t.id == newest;
        Counts {
            prev: self
                .0
                .iter()
                .rev()
                .filter(tracked)
                .find(|t| t.id < generation)
                .map(|t| t.live),
            mine,
            next: self
                .0
                .iter()
                .filter(tracked)
                .find(|t| t.id > generation)
                .map(|t| t.live),
        }
    }
}

pub(crate) fn load_state(g: &GenerationRecord) -> Option<GenerationState> {
    GenerationState::from_code(g.state.load(Relaxed))
}

/// Whether the server committed the generation's configuration (`docs/design.md`
/// 4.6).
pub(crate) fn committed(g: &GenerationRecord) -> bool {
    g.committed_ns.load(Relaxed) != 0
}

pub(crate) fn worker_id(slot: &WorkerSlot) -> WorkerId {
    WorkerId {
        generation: slot.generation.load(Relaxed),
        pid: slot.pid.load(Relaxed),
        index: slot.index.load(Relaxed),
    }
}

impl Region {
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

    /// Slots whose process is alive as far as the registry knows: Running or Exiting.
    pub(crate) fn present_slots(&self) -> impl Iterator<Item = (u32, &WorkerSlot)> {
        self.slots().filter(|(_, s)| {
            let state = s.state.load(Relaxed);
            state == WorkerState::Running.code() || state == WorkerState::Exiting.code()
        })
    }

    pub(crate) fn census(&self) -> Census {
        let mut tallies: Vec<Tally> = self
            .generations()
            .map(|g| Tally {
                id: g.id.load(Relaxed),
                live: 0,
                present: 0,
                committed: committed(g),
            })
            .collect();
        tallies.sort_unstable_by_key(|t| t.id);
        for (_, slot) in self.present_slots() {
            let running = slot.state.load(Relaxed) == WorkerState::Running.code();
            let generation = slot.generation.load(Relaxed);
            if let Some(t) = tallies.iter_mut().find(|t| t.id == generation) {
                t.live += running as u32;
                t.present += 1;
            }
        }
        Census(tallies)
    }
}
