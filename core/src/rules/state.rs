//! The registry decoded: plain values the rules read and change, with no atomics,
//! no mapping and no clock. `tables` decodes the region into a [`State`]; `apply`
//! writes the changes back.

use crate::event::{Counts, Detail, WorkerId};
use crate::leader::LeaderWord;
use crate::lifecycle::{EventKind, ExitReason, GenerationState, RunEnd, RunState, WorkerState};
use crate::process::Identity;
use crate::region::layout::{CRASH_TIMES, LEADER_CAUSES};

/// One record of the generation table. `id == 0`: the record is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Generation {
    /// Its position in the table.
    pub record: u32,
    pub id: u64,
    /// `None`: a code this build does not know (a damaged file); no rule changes it.
    pub state: Option<GenerationState>,
    pub kind: u32,
    pub master: Identity,
    pub expected_workers: u32,
    pub registered_ns: u64,
    pub registered_mono_ns: u64,
    pub interval_ms: u64,
    pub failed_ms: u64,
    pub start_timeout_ms: u64,
    pub workers_started: u64,
    pub respawns: u64,
    /// Counted by the journal (its crash entries carry the total): only a
    /// registration resets it.
    pub crashes: u64,
    /// 0 until a worker exits gracefully or the generation ends.
    pub exit_reason: u32,
    pub previous_run: u32,
    pub exited_ns: u64,
    /// When the server committed the configuration (0: not yet).
    pub committed_ns: u64,
}

impl Generation {
    pub(crate) fn is(&self, state: GenerationState) -> bool {
        self.state == Some(state)
    }

    /// Running or Draining: it has had workers and has not ended, so its last
    /// worker's going ends it.
    pub(crate) fn has_workers_to_end(&self) -> bool {
        self.is(GenerationState::Running) || self.is(GenerationState::Draining)
    }

    pub(crate) fn committed(&self) -> bool {
        self.committed_ns != 0
    }

    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        ExitReason::from_code(self.exit_reason)
    }
}

/// One worker slot. Its mutex is not here: whether it is held is a probe's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Slot {
    /// Its position in the table.
    pub slot: u32,
    /// `None`: a code this build does not know; no rule changes it.
    pub state: Option<WorkerState>,
    pub pid: u32,
    pub generation: u64,
    pub index: u32,
    pub hung: bool,
    pub start_time: u64,
    pub registered_ns: u64,
    /// Written by the worker itself without the lock: only a registration stores it.
    pub heartbeat_mono_ns: u64,
    pub hung_since_mono_ns: u64,
    /// The pid of the dead worker this one replaced (0: not a respawn).
    pub replaced_pid: u32,
    pub ppid: u32,
    /// How many dead workers of this generation and index precede this one.
    pub respawns: u32,
    /// It began its graceful exit: it is no leader's successor.
    pub leaving: bool,
}

impl Slot {
    pub(crate) fn is(&self, state: WorkerState) -> bool {
        self.state == Some(state)
    }

    /// Running or Exiting: its process is alive as far as the registry knows.
    pub(crate) fn present(&self) -> bool {
        self.is(WorkerState::Running) || self.is(WorkerState::Exiting)
    }

    pub(crate) fn worker(&self) -> WorkerId {
        WorkerId {
            generation: self.generation,
            pid: self.pid,
            index: self.index,
        }
    }
}

/// The header fields the rules change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Node {
    /// `None`: a code this build does not know, read as a run in progress.
    pub run: Option<RunState>,
    pub run_id: u64,
    /// The id the next generation gets.
    pub next_generation: u64,
    /// Highest slot ever used, plus one.
    pub slot_high_water: u32,
    /// The last verdict: its generation (0: none), its code (`VERDICT_COMMITTED`,
    /// `VERDICT_FAILED`), when.
    pub verdict_generation: u64,
    pub verdict: u32,
    pub verdict_ns: u64,
    /// When a configuration was last committed (0: never).
    pub last_success_ns: u64,
    /// Verdicts on reloads and upgrades, and the failed ones among them.
    pub reload_verdicts: u64,
    pub reload_failures: u64,
    /// The crash-loop rule of the newest configuration (0 crashes: off).
    pub crash_loop_intensity: u32,
    pub crash_loop_period_ms: u64,
    /// Highest worker index with a crash history, plus one.
    pub history_high_water: u32,
    /// The leader, the last change's cause and the term.
    pub leader: LeaderWord,
    /// The leader's pid (its slot may be a respawn's by now).
    pub leader_pid: u32,
    /// Leadership changes by cause code.
    pub leader_changes: [u64; LEADER_CAUSES],
}

/// The crash history of one worker index. Only indexes that ever crashed are
/// decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct History {
    /// Its position in the table: the worker index.
    pub index: u32,
    /// Crashes recorded; the next goes to `times[crashes % CRASH_TIMES]`.
    pub crashes: u64,
    /// The last crashed worker.
    pub last_pid: u32,
    pub last_generation: u64,
    pub looping: bool,
    /// When the current or last loop began (wall clock).
    pub loop_since_ns: u64,
    /// Monotonic times of the last crashes.
    pub times: [u64; CRASH_TIMES],
}

impl History {
    /// The last crashed worker.
    pub(crate) fn last_worker(&self) -> WorkerId {
        WorkerId {
            generation: self.last_generation,
            pid: self.last_pid,
            index: self.index,
        }
    }

    /// The crashes recorded within `period_ns` before `now` (monotonic), and the
    /// time of the newest. Times after `now` come from a clock that was reset and
    /// are not counted.
    pub(crate) fn recent(&self, now: u64, period_ns: u64) -> (u32, Option<u64>) {
        let kept = self.crashes.min(CRASH_TIMES as u64) as usize;
        let in_period = self.times[..kept]
            .iter()
            .filter(|&&t| t <= now && now - t <= period_ns)
            .count() as u32;
        let newest = self.times[..kept]
            .iter()
            .copied()
            .filter(|&t| t <= now)
            .max();
        (in_period, newest)
    }
}

/// The registry as the rules see it: the node, the generation records in use and
/// the free ones, and the slots up to the high-water mark and the first one past it
/// (free, unless the table is full).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct State {
    pub node: Node,
    /// The records in use (`id != 0`), in table order.
    pub generations: Vec<Generation>,
    /// The free records, in table order.
    pub free: Vec<u32>,
    /// In table order: `slots[i].slot == i`.
    pub slots: Vec<Slot>,
    /// The slot table's capacity (only its beginning is decoded).
    pub slot_capacity: u32,
    /// The crash histories of the indexes that ever crashed, by index.
    pub histories: Vec<History>,
}

impl State {
    /// The generation records in use.
    pub(crate) fn records(&self) -> impl Iterator<Item = &Generation> {
        self.generations.iter()
    }

    /// The record at `record`, free or not.
    pub(crate) fn record(&self, record: u32) -> Generation {
        self.generations
            .iter()
            .find(|g| g.record == record)
            .copied()
            .unwrap_or(Generation {
                record,
                state: Some(GenerationState::Free),
                ..Generation::default()
            })
    }

    /// Stores `g` at its record: in use, or free when its id is 0.
    pub(crate) fn set_record(&mut self, g: Generation) {
        self.generations.retain(|x| x.record != g.record);
        self.free.retain(|&r| r != g.record);
        if g.id == 0 {
            let at = self.free.partition_point(|&r| r < g.record);
            self.free.insert(at, g.record);
        } else {
            let at = self.generations.partition_point(|x| x.record < g.record);
            self.generations.insert(at, g);
        }
    }

    /// The crash history of worker index `index` (a blank one if it never crashed).
    pub(crate) fn history(&self, index: u32) -> History {
        self.histories
            .iter()
            .find(|h| h.index == index)
            .copied()
            .unwrap_or(History {
                index,
                ..History::default()
            })
    }

    /// Stores the crash history `h` at its index.
    pub(crate) fn set_history(&mut self, h: History) {
        match self.histories.binary_search_by_key(&h.index, |x| x.index) {
            Ok(at) => self.histories[at] = h,
            Err(at) => self.histories.insert(at, h),
        }
    }

    pub(crate) fn generation(&self, id: u64) -> Option<&Generation> {
        self.records().find(|g| g.id == id)
    }

    pub(crate) fn present_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.present())
    }

    /// The present slot of `worker` while its process still counts as running.
    pub(crate) fn running(&self, worker: WorkerId) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.is(WorkerState::Running) && s.worker() == worker)
    }

    pub(crate) fn census(&self) -> Census {
        Census::new(self.records().map(|g| {
            let (live, present) = self
                .present_slots()
                .filter(|s| s.generation == g.id)
                .fold((0, 0), |(live, present), s| {
                    (live + u32::from(s.is(WorkerState::Running)), present + 1)
                });
            (g.id, live, present, g.committed())
        }))
    }
}

/// Per generation, ordered by id: its live (Running) workers, its present ones
/// (Running, or Exiting: announced their exit but still alive), and whether the
/// server committed it.
#[derive(Debug, Clone)]
pub(crate) struct Census(Vec<Tally>);

/// One generation's line of a [`Census`].
#[derive(Debug, Clone, Copy)]
struct Tally {
    id: u64,
    live: u32,
    present: u32,
    committed: bool,
}

impl Census {
    /// A census of `(id, live, present, committed)` lines.
    pub(crate) fn new(lines: impl IntoIterator<Item = (u64, u32, u32, bool)>) -> Census {
        let mut tallies: Vec<Tally> = lines
            .into_iter()
            .map(|(id, live, present, committed)| Tally {
                id,
                live,
                present,
                committed,
            })
            .collect();
        tallies.sort_unstable_by_key(|t| t.id);
        Census(tallies)
    }

    fn tally(&self, generation: u64) -> Option<&Tally> {
        self.0.iter().find(|t| t.id == generation)
    }

    pub(crate) fn live(&self, generation: u64) -> u32 {
        self.tally(generation).map_or(0, |t| t.live)
    }

    pub(crate) fn present(&self, generation: u64) -> u32 {
        self.tally(generation).map_or(0, |t| t.present)
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

    /// The counts an event gets: `n_mine` is 0 for the events of a generation as a
    /// whole, its live workers for the events of a worker; a recovered lock is about
    /// no generation.
    pub(crate) fn counts_for(&self, generation: u64, detail: &Detail) -> Counts {
        match detail.kind() {
            EventKind::LockRecovered => Counts::default(),
            EventKind::MasterStart | EventKind::MasterExit | EventKind::GenerationAbort => {
                self.counts(generation, 0)
            }
            _ => self.counts(generation, self.live(generation)),
        }
    }
}

/// How a node run ended, from whether its end was clean.
pub(crate) fn run_end(clean: bool) -> RunEnd {
    if clean {
        RunEnd::Clean
    } else {
        RunEnd::Unclean
    }
}
