//! The records of the shared region, exactly as they sit in the file.
//!
//! Every field is an atomic or a process-shared mutex: the records are written by
//! other processes at any time, so a shared reference to a record asserts nothing
//! about immutability (atomics and `UnsafeCell` are the two ways Rust allows shared
//! mutation), and a concurrent read is a stale value, never undefined behaviour.
//! Any bit pattern is a valid value of every record, so a corrupt file can produce
//! wrong numbers, which are validated where they are used, but no unsoundness.
//! Changing anything here means bumping [`LAYOUT_VERSION`].

use std::mem::size_of;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use crate::lifecycle::EventKind;
use crate::lock::RawMutex;

/// "WMREGIST".
pub(crate) const MAGIC: u64 = 0x574d_5245_4749_5354;
pub(crate) const LAYOUT_VERSION: u32 = 3;
/// The header occupies one page, so the records start page-aligned.
pub(crate) const HEADER_SIZE: usize = 4096;
/// Every record occupies this many bytes (two cache lines).
pub(crate) const RECORD_SIZE: usize = 128;
/// Upper bound of every capacity, so a corrupt header cannot ask for a huge mapping.
pub(crate) const MAX_CAPACITY: u32 = 65536;

/// Header statistics, indexed by [`Stat`].
pub(crate) const STAT_COUNT: usize = 13;
/// Per-kind event counters: room for every event kind code.
pub(crate) const EVENT_KINDS: usize = 16;

/// The counters kept in the header for metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stat {
    Crashes = 0,
    Reloads = 1,
    Restarts = 2,
    Upgrades = 3,
    Aborts = 4,
    Hangs = 5,
    LockAcquisitions = 6,
    LockContended = 7,
    LockWaitNs = 8,
    LockHoldNs = 9,
    LockRecoveries = 10,
    Respawns = 11,
    Starts = 12,
}

#[repr(C)]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub layout_version: AtomicU32,
    pub header_size: AtomicU32,
    pub record_size: AtomicU32,
    pub mutex_size: AtomicU32,
    pub cap_generations: AtomicU32,
    pub cap_workers: AtomicU32,
    pub cap_events: AtomicU32,
    /// Highest worker slot index ever used, plus one: scans stop there.
    pub slot_high_water: AtomicU32,
    pub total_size: AtomicU64,
    pub created_ns: AtomicU64,
    pub boot_id: [AtomicU64; 2],
    /// Reached only through a writable region (`Region::lock`).
    pub(super) lock: RawMutex,
    pub lock_holder_pid: AtomicU32,
    pub lock_holder_op: AtomicU32,
    pub lock_acquired_mono_ns: AtomicU64,
    pub next_generation: AtomicU64,
    pub run_id: AtomicU64,
    pub run_state: AtomicU32,
    pub _reserved: AtomicU32,
    pub next_seq: AtomicU64,
    pub stats: [AtomicU64; STAT_COUNT],
    /// Odd while a writer changes the tables (see `docs/design.md` 7.2); also the
    /// futex word that journal readers sleep on.
    pub change_seq: AtomicU32,
    pub _reserved2: AtomicU32,
    /// Journal entries ever appended, per event kind code.
    pub event_totals: [AtomicU64; EVENT_KINDS],
    /// Wall-clock time of the last entry of each event kind code (0: none).
    pub event_last_ns: [AtomicU64; EVENT_KINDS],
    /// Every journal entry before this one has had its callbacks run (see
    /// `docs/design.md` 5.4): entries from here on, up to `next_seq`, were journalled
    /// by a lock holder that died before it handed them to its callbacks.
    pub delivered_seq: AtomicU64,
    /// The last verdict on a configuration (see `docs/design.md` 4.6): its
    /// generation (0: none yet), whether it was committed (1) or failed (2), when.
    pub verdict_generation: AtomicU64,
    pub verdict: AtomicU32,
    pub _reserved3: AtomicU32,
    pub verdict_ns: AtomicU64,
    /// When nginx last committed a configuration (0: never).
    pub last_success_ns: AtomicU64,
    /// Verdicts on reloads and upgrades (configurations loaded into a running
    /// node), and how many of them were failures.
    pub reload_verdicts: AtomicU64,
    pub reload_failures: AtomicU64,
    /// The crash-loop rule of the newest registered configuration: more than
    /// `crash_loop_intensity` crashes of one worker index within
    /// `crash_loop_period_ms` (see `docs/design.md` 4.8).
    pub crash_loop_period_ms: AtomicU64,
    pub crash_loop_intensity: AtomicU32,
    /// Highest worker index with a crash history, plus one: reads stop there.
    pub history_high_water: AtomicU32,
    /// The node's leader, term and the cause of the last change, in one word that
    /// workers read without the lock ([`LeaderWord`](crate::leader::LeaderWord)).
    pub leader: AtomicU64,
    /// The leader's pid: its slot may be taken over by a respawn.
    pub leader_pid: AtomicU32,
    pub _reserved5: AtomicU32,
    /// Leadership changes, by cause code.
    pub leader_changes: [AtomicU64; LEADER_CAUSES],
}

/// Per-cause leadership counters: room for every cause code.
pub(crate) const LEADER_CAUSES: usize = 8;

/// Crash times kept per worker index: a loop is more than `intensity` crashes
/// within the period, so `intensity` can be at most `CRASH_TIMES - 1`.
pub(crate) const CRASH_TIMES: usize = 11;

/// The crash history of one worker index, across generations: record `i` of the
/// history table is index `i`'s.
#[repr(C)]
pub(crate) struct CrashHistory {
    /// Crashes recorded for this index (0: the record was never used); the ring
    /// position of the next one is `crashes % CRASH_TIMES`.
    pub crashes: AtomicU64,
    /// The last crashed worker: its pid and generation (with the pid, a redone
    /// crash is recognised and not counted twice).
    pub last_pid: AtomicU32,
    /// 1 while the index is in a crash loop.
    pub looping: AtomicU32,
    pub last_generation: AtomicU64,
    /// When the current (or last) loop began (wall clock, 0: never).
    pub loop_since_ns: AtomicU64,
    /// Monotonic times of the last `CRASH_TIMES` crashes.
    pub times: [AtomicU64; CRASH_TIMES],
}

#[repr(C)]
pub(crate) struct GenerationRecord {
    /// 0: the record is free.
    pub id: AtomicU64,
    pub state: AtomicU32,
    pub kind: AtomicU32,
    pub master_pid: AtomicU32,
    pub expected_workers: AtomicU32,
    pub master_start_time: AtomicU64,
    pub registered_ns: AtomicU64,
    pub registered_mono_ns: AtomicU64,
    pub interval_ms: AtomicU64,
    pub failed_ms: AtomicU64,
    pub start_timeout_ms: AtomicU64,
    pub workers_started: AtomicU64,
    pub respawns: AtomicU64,
    pub crashes: AtomicU64,
    /// 0 until a worker exits gracefully or the generation ends.
    pub exit_reason: AtomicU32,
    pub previous_run: AtomicU32,
    pub exited_ns: AtomicU64,
    /// When the server committed this configuration (0: not yet): the master closed
    /// the previous one, or a worker of it registered.
    pub committed_ns: AtomicU64,
}

#[repr(C)]
pub(crate) struct WorkerSlot {
    /// Held by the worker for its whole life (see `docs/design.md` 3.2). Reached
    /// only through a writable region (`Region::slot_mutex`).
    pub(super) mutex: RawMutex,
    pub state: AtomicU32,
    pub pid: AtomicU32,
    pub generation: AtomicU64,
    pub index: AtomicU32,
    pub hung: AtomicU32,
    pub start_time: AtomicU64,
    pub registered_ns: AtomicU64,
    pub heartbeat_mono_ns: AtomicU64,
    pub hung_since_mono_ns: AtomicU64,
    /// The pid of the dead worker this one replaced (0: not a respawn).
    pub replaced_pid: AtomicU32,
    pub ppid: AtomicU32,
    /// How many dead workers of this generation and index precede this one.
    pub respawns: AtomicU32,
    /// 1 once the worker began its graceful exit: it is no leader's successor.
    pub leaving: AtomicU32,
}

#[repr(C)]
pub(crate) struct EventRecord {
    /// 0 while being written; otherwise the sequence number of the entry.
    pub seq: AtomicU64,
    pub time_ns: AtomicU64,
    pub kind: AtomicU32,
    pub detail: AtomicU32,
    pub generation: AtomicU64,
    pub pid: AtomicU32,
    pub index: AtomicI32,
    pub n_prev: AtomicI32,
    pub n_mine: AtomicI32,
    pub n_next: AtomicI32,
    pub other_pid: AtomicU32,
    pub flags: AtomicU32,
    pub _reserved: AtomicU32,
    pub value: AtomicU64,
    /// The header counters this entry brings, as they are once it is applied: the
    /// entry's kind total, its statistic (0: none) and its generation's counter
    /// (0: none). Storing them, rather than adding one, makes applying an entry
    /// idempotent, so the repair can redo it (see `docs/design.md` 5.3).
    pub kind_total: AtomicU64,
    pub stat_total: AtomicU64,
    pub generation_total: AtomicU64,
}

const _: () = assert!(size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(size_of::<GenerationRecord>() <= RECORD_SIZE);
const _: () = assert!(size_of::<WorkerSlot>() <= RECORD_SIZE);
const _: () = assert!(size_of::<EventRecord>() <= RECORD_SIZE);
const _: () = assert!(size_of::<CrashHistory>() <= RECORD_SIZE);
const _: () = assert!(HEADER_SIZE % RECORD_SIZE == 0 && RECORD_SIZE % 64 == 0);

/// Record counts of a region, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    /// Generations tracked at once (live ones, plus the newest).
    pub generations: u32,
    /// Worker slots: live workers plus tombstones of dead ones.
    pub workers: u32,
    /// Entries of the event journal ring.
    pub events: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            generations: 64,
            workers: 1024,
            events: 1024,
        }
    }
}

impl Capacities {
    /// The byte offsets of the four tables and the total size. The crash histories,
    /// one per worker index, are as many as the worker slots.
    pub(crate) fn offsets(&self) -> Offsets {
        let generations = HEADER_SIZE;
        let workers = generations + self.generations as usize * RECORD_SIZE;
        let events = workers + self.workers as usize * RECORD_SIZE;
        let histories = events + self.events as usize * RECORD_SIZE;
        let total = histories + self.workers as usize * RECORD_SIZE;
        Offsets {
            generations,
            workers,
            events,
            histories,
            total,
        }
    }

    /// The first capacity out of `1..=MAX_CAPACITY`, by name.
    pub(crate) fn invalid(&self) -> Option<(&'static str, u32)> {
        [
            ("generations", self.generations),
            ("workers", self.workers),
            ("events", self.events),
        ]
        .into_iter()
        .find(|&(_, n)| n == 0 || n > MAX_CAPACITY)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Offsets {
    pub generations: usize,
    pub workers: usize,
    pub events: usize,
    pub histories: usize,
    pub total: usize,
}

const _: () = {
    let mut i = 0;
    while i < EventKind::ALL.len() {
        assert!((EventKind::ALL[i].code() as usize) < EVENT_KINDS);
        i += 1;
    }
};
