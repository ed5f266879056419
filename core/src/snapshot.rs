//! A picture of the registry at one moment, taken under the lock or read outside it.

use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::{Duration, SystemTime};

use crate::change;
use crate::clock::{self, monotonic_ns};
use crate::event::{Counts, WorkerId};
use crate::lifecycle::{
    EventKind, ExitReason, GenerationState, LeaderCause, LockOp, RunEnd, RunState, StartKind,
    WorkerState,
};
use crate::process::Identity;
use crate::region::layout::{Stat, LEADER_CAUSES};
use crate::region::map::Region;
use crate::region::Capacities;
use crate::rules::state::Census;
use crate::tables::{self, load_state, worker_id};

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
    /// Its parent when it registered: in nginx, its master.
    pub ppid: u32,
    pub registered: SystemTime,
    /// Time since its last heartbeat.
    pub heartbeat_age: Duration,
    pub hung: bool,
    /// The dead worker this one replaced.
    pub replaces_pid: Option<u32>,
    /// How many workers of this generation and index died before this one.
    pub respawns: u32,
}

/// The value of one of the [`Stats`]: a count, or a time that the JSON and the
/// metrics give in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterValue {
    Count(u64),
    Time(Duration),
}

/// One of the [`Stats`], as [`Stats::counters`] lists them for the CLI's JSON and the
/// Prometheus exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Its key in `worker-manager status --json`'s `stats`.
    pub name: &'static str,
    /// Its Prometheus metric (without the `worker_manager_` prefix), with the label
    /// that tells it from the other counters of the same metric, if any.
    pub metric: &'static str,
    pub label: Option<(&'static str, &'static str)>,
    /// The metric's help text.
    pub help: &'static str,
    pub value: CounterValue,
}

/// A header statistic (a count of nanoseconds for a time) as a field of [`Stats`].
trait FromStat {
    fn from_stat(n: u64) -> Self;
}

impl FromStat for u64 {
    fn from_stat(n: u64) -> u64 {
        n
    }
}

impl FromStat for Duration {
    fn from_stat(ns: u64) -> Duration {
        Duration::from_nanos(ns)
    }
}

impl From<u64> for CounterValue {
    fn from(n: u64) -> CounterValue {
        CounterValue::Count(n)
    }
}

impl From<Duration> for CounterValue {
    fn from(d: Duration) -> CounterValue {
        CounterValue::Time(d)
    }
}

/// The one list of the header's statistics: for each, its field of [`Stats`], its
/// [`Stat`] in the header, its key in the CLI's JSON, its metric and label, and the
/// metric's help, in the order the JSON and the metrics give them.
macro_rules! stats {
    // The label of a counter of `generations_total`: the start kind it counts.
    (@label) => { None };
    (@label $kind:ident) => { Some(("kind", StartKind::$kind.as_str())) };
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $stat:ident, $name:literal,
            $metric:literal $({ kind: $kind:ident })?, $help:expr;
    )+) => {
        /// Counters kept for the registry's life.
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $field: $ty,)+
        }

        impl Stats {
            fn read(stat: impl Fn(Stat) -> u64) -> Stats {
                Stats {
                    $($field: FromStat::from_stat(stat(Stat::$stat)),)+
                }
            }

            /// Every counter with its names, in the order of the JSON and the
            /// metrics.
            pub fn counters(&self) -> Vec<Counter> {
                vec![$(Counter {
                    name: $name,
                    metric: $metric,
                    label: stats!(@label $($kind)?),
                    help: $help,
                    value: self.$field.into(),
                },)+]
            }
        }
    };
}

const GENERATIONS_HELP: &str = "Generations registered, by kind: start, restart, reload, upgrade.";

stats! {
    /// Generations registered by kind.
    starts: u64 = Starts, "starts",
        "generations_total" { kind: Start }, GENERATIONS_HELP;
    restarts: u64 = Restarts, "restarts",
        "generations_total" { kind: Restart }, GENERATIONS_HELP;
    reloads: u64 = Reloads, "reloads",
        "generations_total" { kind: Reload }, GENERATIONS_HELP;
    upgrades: u64 = Upgrades, "upgrades",
        "generations_total" { kind: Upgrade }, GENERATIONS_HELP;
    crashes: u64 = Crashes, "crashes",
        "worker_crashes_total", "Workers that died without exiting.";
    respawns: u64 = Respawns, "respawns",
        "worker_respawns_total",
        "Workers that replaced a dead worker of the same generation and index.";
    aborts: u64 = Aborts, "aborts",
        "generation_aborts_total",
        "Generations that never got a worker (a reload that failed after init_by_lua).";
    hangs: u64 = Hangs, "hangs",
        "worker_hangs_total", "Times a worker's heartbeat became overdue.";
    lock_acquisitions: u64 = LockAcquisitions, "lock_acquisitions",
        "lock_acquisitions_total", "Acquisitions of the registry lock.";
    /// Acquisitions that had to wait for another holder.
    lock_contended: u64 = LockContended, "lock_contended",
        "lock_contended_total",
        "Acquisitions of the registry lock that waited for another holder.";
    /// Times a holder died holding the lock and the registry was repaired.
    lock_recoveries: u64 = LockRecoveries, "lock_recoveries",
        "lock_recoveries_total",
        "Times the registry lock's holder died holding it and the registry was repaired.";
    lock_wait: Duration = LockWaitNs, "lock_wait_seconds",
        "lock_wait_seconds_total", "Time spent waiting for the registry lock.";
    lock_hold: Duration = LockHoldNs, "lock_hold_seconds",
        "lock_hold_seconds_total",
        "Time the registry lock was held (operations and the callbacks they run).";
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
    /// When nginx last committed a configuration.
    pub last_success: Option<SystemTime>,
    /// Verdicts on reloads and upgrades over the registry's life, and how many of
    /// them were failures.
    pub reload_verdicts: u64,
    pub reload_failures: u64,
    /// The crash-loop rule in force: more than `intensity` crashes of one index
    /// within `period` (0: off).
    pub crash_loop_intensity: u32,
    pub crash_loop_period: Duration,
    /// The worker indexes in a crash loop now.
    pub crash_loops: Vec<CrashLoop>,
    /// The node's leader, `None` when no worker leads.
    pub leader: Option<WorkerId>,
    /// Leadership changes so far, and the cause of the last one.
    pub leader_term: u64,
    pub leader_cause: Option<LeaderCause>,
    /// Leadership changes by cause, in code order.
    pub leader_changes: Vec<(LeaderCause, u64)>,
}

/// A worker index in a crash loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    pub index: u32,
    /// When the loop began.
    pub since: SystemTime,
    /// The index's last crashed worker.
    pub last_crashed: WorkerId,
    /// Its crashes within the rule's period, as of the reading.
    pub recent_crashes: u32,
}

impl Snapshot {
    /// Live workers of a generation (0 if it is not tracked).
    pub fn live(&self, generation: u64) -> u32 {
        self.generations
            .iter()
            .find(|g| g.id == generation)
            .map_or(0, |g| g.live_workers)
    }

    /// The workers of `generation` whose process is alive as far as the registry
    /// knows: running, or exiting (announced, still there).
    fn present_workers(&self, generation: u64) -> impl Iterator<Item = &WorkerInfo> {
        self.workers.iter().filter(move |w| {
            w.id.generation == generation
                && matches!(w.state, WorkerState::Running | WorkerState::Exiting)
        })
    }

    /// The counts a callback about `generation` would get, with `n_mine` its live
    /// workers: the registry's own rule (`docs/design.md` 4.2).
    pub fn counts(&self, generation: u64) -> Counts {
        let census = Census::new(self.generations.iter().map(|g| {
            let present = self.present_workers(g.id).count() as u32;
            (g.id, g.live_workers, present, g.committed.is_some())
        }));
        census.counts(generation, self.live(generation))
    }

    /// How long the oldest generation that still has workers has been superseded by
    /// a newer configuration that nginx committed, as of `now`: old workers that
    /// linger. `None` when no generation is draining.
    pub fn oldest_draining(&self, now: SystemTime) -> Option<Duration> {
        self.generations
            .iter()
            .filter(|g| self.present_workers(g.id).next().is_some())
            .filter_map(|g| {
                self.generations
                    .iter()
                    .filter(|n| n.id > g.id)
                    .filter_map(|n| n.committed)
                    .min()
            })
            .min()
            .map(|since| now.duration_since(since).unwrap_or_default())
    }

    /// The live master of `generation`: the one it recorded, or, once that one is
    /// gone, the parent its workers registered under and still have. With nginx's
    /// `daemon on` the process that registers the first generation exits after
    /// forking the real master, the workers' parent; the registry adopts it at its
    /// next operation, which a reader cannot wait for. `None` when neither lives.
    pub fn live_master(&self, generation: &GenerationInfo) -> Option<Identity> {
        let recorded = Identity {
            pid: generation.master_pid,
            start_time: generation.master_start_time,
        };
        if recorded.is_alive() {
            return Some(recorded);
        }
        self.present_workers(generation.id).find_map(|w| {
            let worker = Identity {
                pid: w.id.pid,
                start_time: w.start_time,
            };
            // Still its parent (not reparented: its master lives), and no
            // younger than the worker (not a process that reused the pid since).
            if worker.parent()? != w.ppid {
                return None;
            }
            Identity::of(w.ppid).filter(|m| m.start_time <= w.start_time)
        })
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
pub(crate) fn capture<A>(region: &Region<A>) -> Snapshot {
    let h = region.header();
    let now = monotonic_ns();
    let workers: Vec<WorkerInfo> = region
        .slots()
        .filter_map(|(_, s)| {
            let state = WorkerState::from_code(s.state.load(Relaxed))?;
            (state != WorkerState::Free).then(|| WorkerInfo {
                id: worker_id(s),
                state,
                start_time: s.start_time.load(Relaxed),
                ppid: s.ppid.load(Relaxed),
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
                live_workers: workers
                    .iter()
                    .filter(|w| w.id.generation == id && w.state == WorkerState::Running)
                    .count() as u32,
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
    let stat = |s: Stat| h.stats[s as usize].load(Relaxed);
    let (leader, leader_word) = region.leader();
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
        stats: Stats::read(stat),
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
        last_success: Some(h.last_success_ns.load(Relaxed))
            .filter(|&ns| ns != 0)
            .map(clock::from_unix_nanos),
        reload_verdicts: h.reload_verdicts.load(Relaxed),
        reload_failures: h.reload_failures.load(Relaxed),
        crash_loop_intensity: h.crash_loop_intensity.load(Relaxed),
        crash_loop_period: clock::from_millis(h.crash_loop_period_ms.load(Relaxed)),
        crash_loops: crash_loops(region, now),
        leader,
        leader_term: leader_word.term(),
        leader_cause: leader_word.cause(),
        leader_changes: LeaderCause::ALL
            .iter()
            .map(|&c| {
                let n = h.leader_changes[c.code() as usize % LEADER_CAUSES].load(Relaxed);
                (c, n)
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

/// The indexes in a crash loop.
fn crash_loops<A>(region: &Region<A>, now: u64) -> Vec<CrashLoop> {
    let h = region.header();
    let period_ns = h
        .crash_loop_period_ms
        .load(Relaxed)
        .saturating_mul(1_000_000);
    let end = h
        .history_high_water
        .load(Relaxed)
        .min(region.capacities().workers);
    (0..end)
        .filter_map(|i| tables::history(i, region.history(i)))
        .filter(|h| h.looping)
        .map(|h| CrashLoop {
            index: h.index,
            since: clock::from_unix_nanos(h.loop_since_ns),
            last_crashed: h.last_worker(),
            recent_crashes: h.recent(now, period_ns).0,
        })
        .collect()
}

/// `Header::verdict`: the configuration was committed.
pub(crate) const VERDICT_COMMITTED: u32 = 1;
/// `Header::verdict`: the configuration failed.
pub(crate) const VERDICT_FAILED: u32 = 2;

/// Copies the registry without its lock, retrying while a writer changes it.
pub(crate) fn observe<A>(region: &Region<A>) -> Snapshot {
    let (mut snapshot, consistent) = change::read(region.header(), || capture(region));
    snapshot.consistent = consistent;
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::layout::STAT_COUNT;

    #[test]
    fn every_statistic_is_one_counter_and_a_metric_s_counters_are_adjacent() {
        // Statistic `s` reads as `s + 1`: each must appear exactly once.
        let stats = Stats::read(|s| s as u64 + 1);
        let mut seen: Vec<u64> = stats
            .counters()
            .iter()
            .map(|c| match c.value {
                CounterValue::Count(n) => n,
                CounterValue::Time(d) => d.as_nanos() as u64,
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=STAT_COUNT as u64).collect::<Vec<_>>());
        let counters = stats.counters();
        for (i, c) in counters.iter().enumerate() {
            assert!(
                counters[i + 1..].iter().all(|d| d.name != c.name),
                "{} twice",
                c.name
            );
            if let Some(later) = counters[i + 1..].iter().position(|d| d.metric == c.metric) {
                assert_eq!(later, 0, "{}: its counters are not adjacent", c.metric);
            }
        }
    }
}
