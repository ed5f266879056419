//! A picture of the registry at one moment, taken under the lock or read outside it.

use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::{Duration, SystemTime};

use crate::change;
use crate::clock::{self, monotonic_ns};
use crate::event::{Counts, WorkerId};
use crate::lifecycle::{
    EventKind, ExitReason, GenerationState, LockOp, RunEnd, RunState, StartKind, WorkerState,
};
use crate::region::layout::Stat;
use crate::region::map::Region;
use crate::region::Capacities;
use crate::tables::{load_state, worker_id};

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
    /// The master's start time in clock ticks since boot (with its pid, its
    /// [`Identity`](crate::Identity)).
    pub master_start_time: u64,
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
    /// When its last worker was gone.
    pub exited: Option<SystemTime>,
    /// When the server committed this configuration (`None`: not yet, or never).
    pub committed: Option<SystemTime>,
}

/// nginx's verdict on a configuration: committed (it serves), or failed (it was
/// given up after `init_by_lua`, or never got a worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub generation: u64,
    pub committed: bool,
    pub time: SystemTime,
}

/// A worker slot in use: a live worker, or the tombstone of a dead one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub state: WorkerState,
    /// The process's start time in clock ticks since boot (with its pid, its
    /// [`Identity`](crate::Identity)).
    pub start_time: u64,
    pub registered: SystemTime,
    /// Time since its last heartbeat.
    pub heartbeat_age: Duration,
    pub hung: bool,
    /// The dead worker this one replaced.
    pub replaces_pid: Option<u32>,
    /// How many workers of this generation and index died before this one.
    pub respawns: u32,
}

/// Counters kept for the registry's life.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Generations registered by kind.
    pub starts: u64,
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

/// Journal entries of one kind over the registry's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTally {
    pub kind: EventKind,
    pub total: u64,
    /// When the last one happened.
    pub last: Option<SystemTime>,
}

/// Who holds the registry lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    /// What for; `None` for a code this build does not know.
    pub op: Option<LockOp>,
    pub held_for: Duration,
}

/// The whole registry at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Always true under the lock. Read outside it: false when a writer was changing
    /// the registry throughout the reader's patience (it died in the middle of a
    /// change, see `docs/design.md` 7.2); the figures may then be mixed.
    pub consistent: bool,
    /// The file was last written before the machine rebooted: every process it
    /// records is gone. Only an [`Observer`](crate::Observer) sees this; a
    /// registry's opening resets such a file.
    pub previous_boot: bool,
    pub created: SystemTime,
    /// The lock's holder at the time of the reading (under the lock: the reader).
    pub lock: Option<LockHolder>,
    pub run_id: u64,
    pub run_state: Option<RunState>,
    /// The sequence number the next event will get.
    pub next_seq: u64,
    pub capacities: Capacities,
    /// Ordered by id.
    pub generations: Vec<GenerationInfo>,
    pub workers: Vec<WorkerInfo>,
    pub stats: Stats,
    /// One per event kind, in code order.
    pub events: Vec<EventTally>,
    /// The last verdict on a configuration: a start, restart, reload or upgrade.
    pub verdict: Option<Verdict>,
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
    /// (running or exiting), and the newest committed one.
    pub fn counts(&self, generation: u64) -> Counts {
        let newest = self
            .generations
            .iter()
            .rev()
            .find(|g| g.committed.is_some())
            .map_or(0, |g| g.id);
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

/// Copies the registry. The caller holds the lock, or reads inside
/// [`change::read`].
pub(crate) fn capture(region: &Region) -> Snapshot {
    let h = region.header();
    let census = region.census();
    let now = monotonic_ns();
    let mut generations: Vec<GenerationInfo> = region
        .generations()
        .map(|g| {
            let id = g.id.load(Relaxed);
            GenerationInfo {
                id,
                state: load_state(g),
                kind: StartKind::from_code(g.kind.load(Relaxed)),
                previous_run: RunEnd::from_code(g.previous_run.load(Relaxed)),
                master_pid: g.master_pid.load(Relaxed),
                master_start_time: g.master_start_time.load(Relaxed),
                registered: clock::from_unix_nanos(g.registered_ns.load(Relaxed)),
                interval: clock::from_millis(g.interval_ms.load(Relaxed)),
                failed: clock::from_millis(g.failed_ms.load(Relaxed)),
                expected_workers: g.expected_workers.load(Relaxed),
                live_workers: census.live(id),
                workers_started: g.workers_started.load(Relaxed),
                respawns: g.respawns.load(Relaxed),
                crashes: g.crashes.load(Relaxed),
                exit_reason: ExitReason::from_code(g.exit_reason.load(Relaxed)),
                exited: Some(g.exited_ns.load(Relaxed))
                    .filter(|&ns| ns != 0)
                    .map(clock::from_unix_nanos),
                committed: Some(g.committed_ns.load(Relaxed))
                    .filter(|&ns| ns != 0)
                    .map(clock::from_unix_nanos),
            }
        })
        .collect();
    generations.sort_by_key(|g| g.id);
    let workers = region
        .slots()
        .filter_map(|(_, s)| {
            let state = WorkerState::from_code(s.state.load(Relaxed))?;
            (state != WorkerState::Free).then(|| WorkerInfo {
                id: worker_id(s),
                state,
                start_time: s.start_time.load(Relaxed),
                registered: clock::from_unix_nanos(s.registered_ns.load(Relaxed)),
                heartbeat_age: Duration::from_nanos(
                    now.saturating_sub(s.heartbeat_mono_ns.load(Acquire)),
                ),
                hung: s.hung.load(Relaxed) != 0,
                replaces_pid: Some(s.replaced_pid.load(Relaxed)).filter(|&p| p != 0),
                respawns: s.respawns.load(Relaxed),
            })
        })
        .collect();
    let stat = |s: Stat| h.stats[s as usize].load(Relaxed);
    let holder = h.lock_holder_pid.load(Relaxed);
    Snapshot {
        consistent: true,
        previous_boot: false,
        created: clock::from_unix_nanos(h.created_ns.load(Relaxed)),
        lock: (holder != 0).then(|| LockHolder {
            pid: holder,
            op: LockOp::from_code(h.lock_holder_op.load(Relaxed)),
            held_for: Duration::from_nanos(
                now.saturating_sub(h.lock_acquired_mono_ns.load(Relaxed)),
            ),
        }),
        run_id: h.run_id.load(Relaxed),
        run_state: RunState::from_code(h.run_state.load(Relaxed)),
        next_seq: h.next_seq.load(Acquire),
        capacities: region.capacities(),
        generations,
        workers,
        stats: Stats {
            starts: stat(Stat::Starts),
            crashes: stat(Stat::Crashes),
            respawns: stat(Stat::Respawns),
            reloads: stat(Stat::Reloads),
            restarts: stat(Stat::Restarts),
            upgrades: stat(Stat::Upgrades),
            aborts: stat(Stat::Aborts),
            hangs: stat(Stat::Hangs),
            lock_acquisitions: stat(Stat::LockAcquisitions),
            lock_contended: stat(Stat::LockContended),
            lock_wait: Duration::from_nanos(stat(Stat::LockWaitNs)),
            lock_hold: Duration::from_nanos(stat(Stat::LockHoldNs)),
            lock_recoveries: stat(Stat::LockRecoveries),
        },
        events: EventKind::ALL
            .iter()
            .map(|&kind| {
                let i = kind.code() as usize;
                EventTally {
                    kind,
                    total: h.event_totals[i].load(Relaxed),
                    last: Some(h.event_last_ns[i].load(Relaxed))
                        .filter(|&ns| ns != 0)
                        .map(clock::from_unix_nanos),
                }
            })
            .collect(),
        verdict: match (h.verdict_generation.load(Relaxed), h.verdict.load(Relaxed)) {
            (0, _) => None,
            (generation, code) => Some(Verdict {
                generation,
                committed: code == VERDICT_COMMITTED,
                time: clock::from_unix_nanos(h.verdict_ns.load(Relaxed)),
            }),
        },
    }
}

/// `Header::verdict`: the configuration was committed.
pub(crate) const VERDICT_COMMITTED: u32 = 1;
/// `Header::verdict`: the configuration failed.
pub(crate) const VERDICT_FAILED: u32 = 2;

/// Copies the registry without its lock, retrying while a writer changes it.
pub(crate) fn observe(region: &Region) -> Snapshot {
    let (mut snapshot, consistent) = change::read(region.header(), || capture(region));
    snapshot.consistent = consistent;
    snapshot
}
