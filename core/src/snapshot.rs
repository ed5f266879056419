//! A picture of the registry at one moment.

use std::time::{Duration, SystemTime};

use crate::event::{Counts, WorkerId};
use crate::lifecycle::{ExitReason, GenerationState, RunEnd, RunState, StartKind, WorkerState};
use crate::region::Capacities;

/// A tracked generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationInfo {
    pub id: u64,
    /// `None` only for a code this build does not know.
    pub state: Option<GenerationState>,
    pub kind: Option<StartKind>,
    /// For a restart: how the previous run ended.
    pub previous_run: Option<RunEnd>,
    pub master_pid: u32,
    pub registered: SystemTime,
    pub interval: Duration,
    pub failed: Duration,
    /// 0 when unknown.
    pub expected_workers: u32,
    pub live_workers: u32,
    pub workers_started: u64,
    pub respawns: u64,
    pub crashes: u64,
    pub exit_reason: Option<ExitReason>,
}

/// A worker slot in use: a live worker, or the tombstone of a dead one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub state: WorkerState,
    pub registered: SystemTime,
    /// Time since its last heartbeat.
    pub heartbeat_age: Duration,
    pub hung: bool,
    /// The dead worker this one replaced.
    pub replaces_pid: Option<u32>,
}

/// Counters kept for the registry's life.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    pub crashes: u64,
    pub respawns: u64,
    pub reloads: u64,
    pub restarts: u64,
    pub upgrades: u64,
    pub aborts: u64,
    pub hangs: u64,
    pub lock_acquisitions: u64,
    /// Acquisitions that had to wait for another holder.
    pub lock_contended: u64,
    pub lock_wait: Duration,
    pub lock_hold: Duration,
    /// Times a holder died holding the lock and the registry was repaired.
    pub lock_recoveries: u64,
}

/// The whole registry at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub run_id: u64,
    pub run_state: Option<RunState>,
    /// The sequence number the next event will get.
    pub next_seq: u64,
    pub capacities: Capacities,
    /// Ordered by id.
    pub generations: Vec<GenerationInfo>,
    pub workers: Vec<WorkerInfo>,
    pub stats: Stats,
}

impl Snapshot {
    /// Live workers of a generation (0 if it is not tracked).
    pub fn live(&self, generation: u64) -> u32 {
        self.generations
            .iter()
            .find(|g| g.id == generation)
            .map_or(0, |g| g.live_workers)
    }

    /// The counts a callback about `generation` would get, with `n_mine` its live
    /// workers. Neighbours are the tracked generations: those with a process left
    /// (running or exiting), and the newest.
    pub fn counts(&self, generation: u64) -> Counts {
        let newest = self.generations.last().map_or(0, |g| g.id);
        let tracked = |g: &&GenerationInfo| {
            g.id == newest
                || self.workers.iter().any(|w| {
                    w.id.generation == g.id
                        && matches!(w.state, WorkerState::Running | WorkerState::Exiting)
                })
        };
        Counts {
            prev: self
                .generations
                .iter()
                .rev()
                .filter(tracked)
                .find(|g| g.id < generation)
                .map(|g| g.live_workers),
            mine: self.live(generation),
            next: self
                .generations
                .iter()
                .filter(tracked)
                .find(|g| g.id > generation)
                .map(|g| g.live_workers),
        }
    }

    /// The live workers, in slot order.
    pub fn live_workers(&self) -> impl Iterator<Item = &WorkerInfo> {
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Running)
    }
}
