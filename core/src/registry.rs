//! The registry: the lifecycle operations over the shared region.
//!
//! Every operation takes the registry lock, sweeps for dead workers first, applies
//! the rules of `docs/design.md` section 4, journals the events in order, and then
//! hands them to the caller's callback, still under the lock. This module is safe
//! code over `region` and `lock`.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::time::{Duration, SystemTime};

use crate::change::Change;
use crate::clock::{self, monotonic_ns};
use crate::crash::crash_point;
use crate::error::{Error, Result};
use crate::event::{Counts, Detail, Event, WorkerId};
use crate::journal;
use crate::lifecycle::{
    AbortCause, Detection, EventKind, ExitReason, GenerationState, LockOp, RunEnd, RunState,
    StartKind, WorkerState,
};
use crate::lock::{Acquisition, LockFailure, Locked, TryLocked};
use crate::process::Identity;
use crate::region::layout::{GenerationRecord, Stat, WorkerSlot};
use crate::region::map::{FileId, Region};
use crate::region::{Capacities, Opened};
use crate::snapshot::{self, Snapshot, VERDICT_COMMITTED, VERDICT_FAILED};
use crate::sys;
use crate::tables::{committed, load_state, worker_id, Census};

/// How to open (and, if needed, create) a registry.
#[derive(Debug, Clone)]
pub struct Options {
    /// Capacities of a registry created by this opening; an existing one keeps its own.
    pub capacities: Capacities,
    /// How long an operation waits for the registry lock before failing.
    pub lock_timeout: Duration,
    /// File mode of a created registry.
    pub mode: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacities: Capacities::default(),
            lock_timeout: Duration::from_secs(30),
            mode: 0o600,
        }
    }
}

/// How long a generation that has no worker yet may wait once a newer generation
/// registered (nginx: a reload that failed after `init_by_lua`, then another reload).
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(5);

/// Settings of one generation, chosen by its master when it registers.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Heartbeat interval of its workers.
    pub interval: Duration,
    /// Heartbeat overrun after which a worker is declared hung.
    pub failed: Duration,
    /// How long the generation may wait for its first worker before it is aborted.
    pub start_timeout: Duration,
    /// Workers the master will start (`worker_processes`); 0 when unknown.
    pub expected_workers: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            interval: Duration::from_secs(10),
            failed: Duration::from_secs(5),
            start_timeout: Duration::from_secs(60),
            expected_workers: 0,
        }
    }
}

impl GenerationConfig {
    fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("interval", self.interval),
            ("failed", self.failed),
            ("start_timeout", self.start_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(86_400) {
                return Err(Error::InvalidArgument {
                    name,
                    reason: format!("{value:?} is outside (0 s, 1 day]"),
                });
            }
        }
        Ok(())
    }
}

/// A registered worker of this process. Heartbeats and the exit go through it; it
/// must stay with the thread that registered (see `docs/design.md` 3.2).
#[derive(Debug)]
#[must_use = "a registered worker must heartbeat and exit through its Worker"]
pub struct Worker {
    slot: u32,
    id: WorkerId,
}

impl Worker {
    pub fn id(&self) -> WorkerId {
        self.id
    }
}

/// A handle on a mapped registry. One per process is enough; it is inherited across
/// `fork`, which is how a pre-fork master hands the registry to its workers.
pub struct Registry {
    region: Region,
    path: PathBuf,
    /// The file mapped, as it was at `path` when opened.
    file: FileId,
    opened: Opened,
    lock_timeout: Cell<Duration>,
    /// How many times this process holds the registry lock (re-entrancy).
    depth: Cell<u32>,
    /// The outermost holding hands its events to callbacks (see `Delivery`).
    delivering: Cell<bool>,
}

/// Whether a holding of the lock hands events to callbacks. One that does takes the
/// node-level events no callback has run yet, flagged `redelivered`, and its normal
/// release records everything journalled as delivered; one that does not
/// (`snapshot`, `with_lock`) leaves them for the next that does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Callbacks,
    None,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .field("opened", &self.opened)
            .field("capacities", &self.region.capacities())
            .field("lock_timeout", &self.lock_timeout)
            .finish()
    }
}

/// The registry lock held by [`Registry::hold_lock`] until dropped.
#[must_use = "the registry lock is released as soon as the LockHold is dropped"]
pub struct LockHold<'r> {
    _guard: LockGuard<'r>,
}

impl std::fmt::Debug for LockHold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockHold")
    }
}

/// The registry lock, held. Only the outermost guard of a process unlocks.
struct LockGuard<'r> {
    reg: &'r Registry,
    /// Events of a repair after the previous holder died, delivered with the
    /// operation's own.
    recovered: Vec<Event>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let depth = self.reg.depth.get() - 1;
        self.reg.depth.set(depth);
        if depth == 0 {
            let h = self.reg.region.header();
            if self.reg.delivering.get() {
                // Released normally: every event journalled was handed over.
                h.delivered_seq.store(h.next_seq.load(Relaxed), Relaxed);
            }
            let held = monotonic_ns().saturating_sub(h.lock_acquired_mono_ns.load(Relaxed));
            h.stats[Stat::LockHoldNs as usize].fetch_add(held, Relaxed);
            h.lock_holder_pid.store(0, Relaxed);
            h.lock_holder_op.store(LockOp::None.code(), Relaxed);
            // An unlock can only fail if this thread does not hold the mutex, which the
            // depth count rules out; there is nothing better to do in a destructor.
            let _ = h.lock.unlock();
        }
    }
}

fn master_identity(g: &GenerationRecord) -> Identity {
    Identity {
        pid: g.master_pid.load(Relaxed),
        start_time: g.master_start_time.load(Relaxed),
    }
}

fn check_lock_timeout(timeout: Duration) -> Result<()> {
    if timeout.is_zero() {
        return Err(Error::InvalidArgument {
            name: "lock_timeout",
            reason: "must be positive".into(),
        });
    }
    Ok(())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Registry {
    /// Opens the registry file at `path`, creating it if it does not exist.
    pub fn open(path: impl AsRef<Path>, options: &Options) -> Result<Registry> {
        let path = path.as_ref();
        check_lock_timeout(options.lock_timeout)?;
        let (region, opened, file) = Region::open(path, options.capacities, options.mode)?;
        Ok(Registry {
            region,
            path: path.to_path_buf(),
            file,
            opened,
            lock_timeout: Cell::new(options.lock_timeout),
            depth: Cell::new(0),
            delivering: Cell::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` still names the mapped file: false once it was removed or
    /// replaced (the mapping, and every process using it, go on unaffected).
    pub fn is_at_path(&self) -> bool {
        FileId::of(&self.path).is_ok_and(|id| id == self.file)
    }

    /// Whether the opening created the file, found it, or reset it after a reboot.
    pub fn opened(&self) -> Opened {
        self.opened
    }

    /// Changes how long operations wait for the registry lock (a reloaded
    /// configuration's `lock_timeout`, on a registry its process has mapped).
    pub fn set_lock_timeout(&self, timeout: Duration) -> Result<()> {
        check_lock_timeout(timeout)?;
        self.lock_timeout.set(timeout);
        Ok(())
    }

    pub fn capacities(&self) -> Capacities {
        self.region.capacities()
    }

    // ----- the lock -----------------------------------------------------------

    fn lock(&self, op: LockOp, delivery: Delivery) -> Result<LockGuard<'_>> {
        Ok(self
            .acquire(op, true, delivery)?
            .expect("a waiting acquisition holds the lock or fails"))
    }

    /// Takes the registry lock, waiting up to the lock timeout if `wait`, else only
    /// if it is free (`None` when another process holds it). The guard carries the
    /// events to hand over first: with `Delivery::Callbacks`, those no callback has
    /// run yet; and a repair's, should the previous holder have died.
    fn acquire(&self, op: LockOp, wait: bool, delivery: Delivery) -> Result<Option<LockGuard<'_>>> {
        let guard = || LockGuard {
            reg: self,
            recovered: Vec::new(),
        };
        if self.depth.get() > 0 {
            self.depth.set(self.depth.get() + 1);
            return Ok(Some(guard()));
        }
        let h = self.region.header();
        let failed = |failure: LockFailure| {
            let op = LockOp::from_code(h.lock_holder_op.load(Relaxed)).unwrap_or(LockOp::None);
            failure.into_error(
                self.lock_timeout.get(),
                h.lock_holder_pid.load(Relaxed),
                op.as_str(),
            )
        };
        let acquisition = if wait {
            h.lock.lock(self.lock_timeout.get()).map_err(failed)?
        } else {
            match h.lock.lock_now().map_err(failed)? {
                Some(locked) => Acquisition {
                    locked,
                    waited_since: None,
                },
                None => return Ok(None),
            }
        };
        // From here the mutex is held: the guard must exist before anything can fail.
        self.depth.set(1);
        self.delivering.set(delivery == Delivery::Callbacks);
        let mut guard = guard();
        let acquired = monotonic_ns();
        if let Some(started) = acquisition.waited_since {
            h.stats[Stat::LockContended as usize].fetch_add(1, Relaxed);
            h.stats[Stat::LockWaitNs as usize].fetch_add(acquired.saturating_sub(started), Relaxed);
        }
        let holder_pid = h.lock_holder_pid.load(Relaxed);
        let holder_op = LockOp::from_code(h.lock_holder_op.load(Relaxed)).unwrap_or(LockOp::None);
        // Before any repair: should this process die repairing, the next one names
        // it, not the holder it was recovering from.
        h.lock_holder_pid.store(sys::getpid(), Relaxed);
        h.lock_holder_op.store(op.code(), Relaxed);
        h.lock_acquired_mono_ns.store(acquired, Relaxed);
        h.stats[Stat::LockAcquisitions as usize].fetch_add(1, Relaxed);
        if let Locked::OwnerDied(owner_died) = acquisition.locked {
            let change = Change::begin(h);
            guard.recovered = owner_died.repair(|| self.repair(holder_pid, holder_op, delivery))?;
            drop(change);
        } else if delivery == Delivery::Callbacks {
            guard.recovered = self.undelivered();
        }
        Ok(Some(guard))
    }

    /// The node-level events journalled since the last holding that handed its
    /// events to callbacks, flagged `redelivered`: their holder died before its
    /// callbacks ran, or it had none.
    fn undelivered(&self) -> Vec<Event> {
        let from = self.region.header().delivered_seq.load(Relaxed);
        journal::since(&self.region, from)
            .into_iter()
            .filter(|e| e.kind().is_node_level())
            .map(|e| Event {
                redelivered: true,
                ..e
            })
            .collect()
    }

    /// Puts the registry back into a consistent state after the lock's holder died:
    /// the journal head and counters, what follows the newest entry, the generation
    /// counter, slot mutexes left behind by a half-done registration; then sweeps to
    /// report the dead. The events: with `Delivery::Callbacks`, first those whose
    /// callbacks no holder ran; then the repair's own.
    fn repair(&self, holder_pid: u32, holder_op: LockOp, delivery: Delivery) -> Result<Vec<Event>> {
        let h = self.region.header();
        journal::repair(&self.region);
        let mut events = match delivery {
            Delivery::Callbacks => self.undelivered(),
            Delivery::None => Vec::new(),
        };
        if let Some(last) = journal::last(&self.region) {
            self.settle(&last, &mut events);
        }
        let caps = self.region.capacities();
        let max_id = (0..caps.generations)
            .map(|i| self.region.generation(i).id.load(Relaxed))
            .max()
            .unwrap_or(0);
        h.next_generation
            .fetch_max(max_id.saturating_add(1), Relaxed);
        for i in 0..caps.workers {
            let slot = self.region.slot(i);
            if slot.state.load(Relaxed) != WorkerState::Running.code()
                && slot.mutex.try_lock()? != TryLocked::Busy
            {
                slot.mutex.unlock()?;
            }
        }
        self.emit(
            &mut events,
            0,
            Detail::LockRecovered {
                holder_pid,
                holder_op,
            },
        );
        self.sweep_locked(holder_pid, &mut events)?;
        Ok(events)
    }

    // ----- reading the tables (the caller holds the lock) ---------------------

    /// nginx's pre-daemon process registers the generation and exits; the real
    /// master is the parent of its workers. Once the recorded master is gone,
    /// `parent`, a worker's parent, becomes the generation's master.
    fn adopt_master(g: &GenerationRecord, parent: u32) {
        if parent != g.master_pid.load(Relaxed) && !master_identity(g).is_alive() {
            if let Some(master) = Identity::of(parent) {
                g.master_pid.store(master.pid, Relaxed);
                g.master_start_time.store(master.start_time, Relaxed);
            }
        }
    }

    /// What replaces `g`: the newest newer generation that the server committed. A
    /// reload is committed before its workers are forked (its master closes the
    /// previous configuration), so however slowly they start, the old workers see
    /// it; a configuration that failed, or is still loading, replaces nothing.
    fn successor(&self, g: &GenerationRecord) -> Option<&GenerationRecord> {
        let id = g.id.load(Relaxed);
        self.region
            .generations()
            .filter(|s| s.id.load(Relaxed) > id && committed(s))
            .max_by_key(|s| s.id.load(Relaxed))
    }

    /// Why `g`'s workers go, judging by what replaces it.
    fn successor_reason(&self, g: &GenerationRecord) -> ExitReason {
        match self.successor(g) {
            Some(s) if s.master_pid.load(Relaxed) == g.master_pid.load(Relaxed) => {
                ExitReason::Reload
            }
            Some(_) => ExitReason::Upgrade,
            None => ExitReason::Stop,
        }
    }

    // ----- writing (the caller holds the lock) ---------------------------------

    /// Journals an event about `generation` with the counts at this moment, and
    /// queues it for the callbacks. `n_mine` is 0 for the events of a generation as a
    /// whole, the generation's live workers for the events of a worker.
    fn emit(&self, events: &mut Vec<Event>, generation: u64, detail: Detail) {
        self.emit_with(events, generation, self.region.census(), detail);
    }

    /// [`Registry::emit`] with the counts of `census`: the registry as it is once the
    /// event's effects, which follow the entry, are done.
    fn emit_with(&self, events: &mut Vec<Event>, generation: u64, census: Census, detail: Detail) {
        let counts = match detail {
            Detail::LockRecovered { .. } => Counts::default(),
            Detail::MasterStart { .. }
            | Detail::MasterExit { .. }
            | Detail::GenerationAbort { .. } => census.counts(generation, 0),
            _ => census.counts(generation, census.live(generation)),
        };
        let mut event = Event {
            seq: 0,
            time: SystemTime::now(),
            generation,
            counts,
            detail,
            redelivered: false,
        };
        journal::append(&self.region, &mut event);
        events.push(event);
    }

    /// Frees a generation record and the tombstones of its dead workers.
    fn retire(&self, g: &GenerationRecord) {
        let id = g.id.load(Relaxed);
        for (_, slot) in self.region.slots() {
            if slot.generation.load(Relaxed) == id
                && slot.state.load(Relaxed) == WorkerState::Dead.code()
            {
                slot.state.store(WorkerState::Free.code(), Release);
            }
        }
        g.state.store(0, Relaxed);
        g.id.store(0, Release);
    }

    /// The generation has no live worker left.
    fn master_exit(&self, g: &GenerationRecord, clean: bool, events: &mut Vec<Event>) {
        let reason = ExitReason::from_code(g.exit_reason.load(Relaxed))
            .unwrap_or_else(|| self.successor_reason(g));
        self.emit(events, g.id.load(Relaxed), Detail::MasterExit { reason });
        crash_point("after-entry", EventKind::MasterExit);
        self.end_generation(g, reason, clean);
    }

    /// What follows a `master_exit` entry: the generation ends, and so does the node
    /// run if nothing is left of it.
    fn end_generation(&self, g: &GenerationRecord, reason: ExitReason, clean: bool) {
        g.exit_reason.store(reason.code(), Relaxed);
        g.state.store(GenerationState::Exited.code(), Release);
        g.exited_ns.store(clock::realtime_ns(), Relaxed);
        let id = g.id.load(Relaxed);
        let census = self.region.census();
        if id != census.newest() {
            self.retire(g);
        }
        self.end_run_if_idle(clean);
    }

    /// Ends the node run if nothing is left of it: no live worker, no configuration
    /// loading.
    fn end_run_if_idle(&self, clean: bool) {
        let census = self.region.census();
        let anything_left = self.region.generations().any(|g| {
            matches!(load_state(g), Some(GenerationState::Starting))
                || census.live(g.id.load(Relaxed)) > 0
        });
        if !anything_left {
            let end = if clean {
                RunEnd::Clean
            } else {
                RunEnd::Unclean
            };
            self.region
                .header()
                .run_state
                .store(RunState::Ended(end).code(), Relaxed);
        }
    }

    /// Checks every live worker, reports each death once, ends generations left
    /// without workers, aborts generations that never got one, and ages heartbeats.
    /// `dead_holder` is the pid of a lock holder that died (0 if none).
    fn sweep_locked(&self, dead_holder: u32, events: &mut Vec<Event>) -> Result<()> {
        let me = sys::getpid();
        let now = monotonic_ns();
        for (_, slot) in self.region.present_slots() {
            let detection = match slot.mutex.try_lock()? {
                TryLocked::Busy => {
                    self.age_heartbeat(slot, now, events);
                    continue;
                }
                TryLocked::OwnerDied => Detection::OwnerDied,
                TryLocked::Acquired => Detection::Abandoned,
            };
            slot.mutex.unlock()?;
            if slot.state.load(Relaxed) == WorkerState::Exiting.code() {
                // It announced its exit and is now gone, as announced.
                slot.state.store(WorkerState::Free.code(), Release);
                continue;
            }
            let worker = worker_id(slot);
            let census = self.region.census().without_running(worker.generation);
            self.emit_with(
                events,
                worker.generation,
                census,
                Detail::WorkerCrash {
                    worker,
                    detection,
                    held_lock: dead_holder != 0 && worker.pid == dead_holder,
                    detected_by: me,
                },
            );
            crash_point("after-entry", EventKind::WorkerCrash);
            slot.state.store(WorkerState::Dead.code(), Release);
        }
        self.end_deserted(events);
        self.abort_stalled(now, events);
        Ok(())
    }

    /// A generation whose workers all died gets its `master_exit` once nothing will
    /// respawn them: it was draining, a newer generation replaced it, or its master
    /// is gone. Otherwise its master is expected to respawn them.
    fn end_deserted(&self, events: &mut Vec<Event>) {
        let census = self.region.census();
        let newest = census.newest();
        let deserted: Vec<&GenerationRecord> = self
            .region
            .generations()
            .filter(|g| {
                let id = g.id.load(Relaxed);
                census.present(id) == 0
                    && match load_state(g) {
                        Some(GenerationState::Draining) => true,
                        Some(GenerationState::Running) => {
                            id != newest || !master_identity(g).is_alive()
                        }
                        _ => false,
                    }
            })
            .collect();
        for g in deserted {
            // Unclean if its last workers died: their tombstones are still there.
            let id = g.id.load(Relaxed);
            let clean = !self.region.slots().any(|(_, s)| {
                s.generation.load(Relaxed) == id
                    && s.state.load(Relaxed) == WorkerState::Dead.code()
            });
            self.master_exit(g, clean, events);
        }
    }

    /// Records nginx's verdict on the configuration of generation `id`.
    fn verdict(&self, id: u64, committed: bool) {
        let h = self.region.header();
        let code = if committed {
            VERDICT_COMMITTED
        } else {
            VERDICT_FAILED
        };
        h.verdict.store(code, Relaxed);
        h.verdict_ns.store(clock::realtime_ns(), Relaxed);
        h.verdict_generation.store(id, Relaxed);
    }

    /// The server committed `g`'s configuration: it serves, and replaces the older
    /// generations.
    fn commit(&self, g: &GenerationRecord) {
        if !committed(g) {
            g.committed_ns.store(clock::realtime_ns(), Relaxed);
            self.verdict(g.id.load(Relaxed), true);
        }
    }

    fn abort(&self, g: &GenerationRecord, cause: AbortCause, events: &mut Vec<Event>) {
        let id = g.id.load(Relaxed);
        self.verdict(id, false);
        let census = self.region.census().without(id);
        self.emit_with(events, id, census, Detail::GenerationAbort { cause });
        crash_point("after-entry", EventKind::GenerationAbort);
        self.withdraw(g);
    }

    /// What follows a `generation_abort` entry: the generation is retired, and a run
    /// that a failed start began ends, having nothing in it.
    fn withdraw(&self, g: &GenerationRecord) {
        self.retire(g);
        self.end_run_if_idle(true);
    }

    /// Generations still waiting for their first worker: after a newer generation
    /// registered, they get [`SUPERSEDED_GRACE`] (or their start timeout, if
    /// shorter), since two reloads in a row do start the first one's workers; else
    /// their start timeout. (A dead registrant proves nothing: nginx's pre-daemon
    /// process registers the generation and exits before the master forks workers.)
    fn abort_stalled(&self, now: u64, events: &mut Vec<Event>) {
        let stalled: Vec<(&GenerationRecord, AbortCause)> = self
            .region
            .generations()
            .filter(|g| load_state(g) == Some(GenerationState::Starting) && !committed(g))
            .filter_map(|g| {
                let id = g.id.load(Relaxed);
                let timeout = g.start_timeout_ms.load(Relaxed).saturating_mul(1_000_000);
                let grace = timeout.min(clock::nanos(SUPERSEDED_GRACE));
                let superseded = self.region.generations().any(|n| {
                    n.id.load(Relaxed) > id
                        && now.saturating_sub(n.registered_mono_ns.load(Relaxed)) > grace
                });
                let waited = now.saturating_sub(g.registered_mono_ns.load(Relaxed));
                if superseded {
                    Some((g, AbortCause::Superseded))
                } else if waited > timeout {
                    Some((g, AbortCause::TimedOut))
                } else {
                    None
                }
            })
            .collect();
        for (g, cause) in stalled {
            self.abort(g, cause, events);
        }
    }

    /// What follows a `worker_hang` or `worker_recover` entry.
    fn set_hung(slot: &WorkerSlot, hung: bool, now: u64) {
        if hung {
            slot.hung_since_mono_ns.store(now, Relaxed);
        }
        slot.hung.store(u32::from(hung), Relaxed);
    }

    /// Redoes what follows `last`, the newest journal entry, which its writer (a lock
    /// holder that died) may not have done. Each event's entry is written before its
    /// effects on the tables, and those effects are done only where they are missing,
    /// so they are redone here rather than the event reported twice or lost. The
    /// newest entry may be older than the dead holder (it wrote none): then every
    /// effect is there already and nothing changes.
    fn settle(&self, last: &Event, events: &mut Vec<Event>) {
        let generation = || self.region.find_generation(last.generation);
        // The slot of the entry's worker while its process still counts as running:
        // only a dead holder's unfinished operation leaves it so.
        let running = |worker: WorkerId| {
            self.region.present_slots().map(|(_, s)| s).find(|s| {
                worker_id(s) == worker && s.state.load(Relaxed) == WorkerState::Running.code()
            })
        };
        match last.detail {
            Detail::WorkerCrash { worker, .. } => {
                if let Some(s) = running(worker) {
                    s.state.store(WorkerState::Dead.code(), Release);
                }
            }
            Detail::WorkerExit { worker, .. } => {
                // A worker reports its own exit, holding the lock: it is the holder
                // that died, its exit reported. What is left is the slot, and the
                // generation's end if it was the last.
                if let Some(s) = running(worker) {
                    s.state.store(WorkerState::Free.code(), Release);
                    if let Some(g) = generation() {
                        self.end_if_last(g, false, events);
                    }
                }
            }
            Detail::MasterExit { reason } => {
                if let Some(g) =
                    generation().filter(|g| load_state(g) != Some(GenerationState::Exited))
                {
                    // The holder died with it: the run did not end cleanly.
                    self.end_generation(g, reason, false);
                }
            }
            Detail::GenerationAbort { .. } => {
                if let Some(g) = generation() {
                    self.withdraw(g);
                }
            }
            Detail::WorkerHang { worker, .. } | Detail::WorkerRecover { worker, .. } => {
                let hung = last.kind() == EventKind::WorkerHang;
                if let Some(s) = running(worker).filter(|s| (s.hung.load(Relaxed) != 0) != hung) {
                    Self::set_hung(s, hung, monotonic_ns());
                }
            }
            _ => {}
        }
    }

    fn age_heartbeat(&self, slot: &WorkerSlot, now: u64, events: &mut Vec<Event>) {
        let worker = worker_id(slot);
        let Some(g) = self.region.find_generation(worker.generation) else {
            return;
        };
        // Saturating: a file may hold any numbers.
        let limit = g
            .interval_ms
            .load(Relaxed)
            .saturating_add(g.failed_ms.load(Relaxed))
            .saturating_mul(1_000_000);
        let silent = now.saturating_sub(slot.heartbeat_mono_ns.load(Relaxed));
        let hung = slot.hung.load(Relaxed) != 0;
        if !hung && silent > limit {
            self.emit(
                events,
                worker.generation,
                Detail::WorkerHang {
                    worker,
                    silent_for: Duration::from_nanos(silent),
                },
            );
            crash_point("after-entry", EventKind::WorkerHang);
            Self::set_hung(slot, true, now);
        } else if hung && silent <= limit {
            let since = slot.hung_since_mono_ns.load(Relaxed);
            self.emit(
                events,
                worker.generation,
                Detail::WorkerRecover {
                    worker,
                    hung_for: Duration::from_nanos(now.saturating_sub(since)),
                },
            );
            crash_point("after-entry", EventKind::WorkerRecover);
            Self::set_hung(slot, false, now);
        }
    }

    /// Runs `op` under the lock, then hands the events (a repair's first) to
    /// `on_event`, still under the lock.
    fn locked<T>(
        &self,
        op: LockOp,
        on_event: &mut dyn FnMut(&Event),
        body: impl FnOnce(&mut Vec<Event>) -> Result<T>,
    ) -> Result<T> {
        let guard = self.lock(op, Delivery::Callbacks)?;
        self.run_locked(guard, on_event, body)
    }

    /// Sweeps, then runs `body`, under the lock `guard` holds; hands the events (a
    /// repair's first) to `on_event`, still under the lock, then releases it.
    fn run_locked<T>(
        &self,
        mut guard: LockGuard<'_>,
        on_event: &mut dyn FnMut(&Event),
        body: impl FnOnce(&mut Vec<Event>) -> Result<T>,
    ) -> Result<T> {
        let mut events = std::mem::take(&mut guard.recovered);
        let change = Change::begin(self.region.header());
        let outcome = self
            .sweep_locked(0, &mut events)
            .and_then(|()| body(&mut events));
        drop(change);
        // Inside a binding's own holding (`hold_lock`), `on_event` only queues the
        // events for callbacks that run later: the binding records them as done.
        let outermost = self.depth.get() == 1;
        for event in &events {
            on_event(event);
            if outermost {
                self.delivered(event.seq);
            }
        }
        drop(guard);
        outcome
    }

    // ----- the operations --------------------------------------------------------

    /// Registers a new generation whose master is this process: a start, restart,
    /// reload or binary upgrade, decided from what the registry holds. Returns the
    /// generation id.
    pub fn register_generation(
        &self,
        config: &GenerationConfig,
        mut on_event: impl FnMut(&Event),
    ) -> Result<u64> {
        config.validate()?;
        self.locked(LockOp::RegisterGeneration, &mut on_event, |events| {
            self.register_generation_locked(config, events)
        })
    }

    fn register_generation_locked(
        &self,
        config: &GenerationConfig,
        events: &mut Vec<Event>,
    ) -> Result<u64> {
        let h = self.region.header();
        let me = Identity::current();
        // The pre-daemon process may still have been alive when the workers
        // registered: judge each master by what its workers know.
        for (_, slot) in self.region.present_slots() {
            if let Some(g) = self.region.find_generation(slot.generation.load(Relaxed)) {
                Self::adopt_master(g, slot.ppid.load(Relaxed));
            }
        }
        let active = self
            .region
            .generations()
            .filter(|g| load_state(g) != Some(GenerationState::Exited))
            .max_by_key(|g| g.id.load(Relaxed));
        let run = RunState::from_code(h.run_state.load(Relaxed)).unwrap_or(RunState::Running);
        // A master that still has a generation reloads, even when another master's
        // generation is newer (an upgrade in progress).
        let mine = self.region.generations().any(|g| {
            load_state(g) != Some(GenerationState::Exited) && g.master_pid.load(Relaxed) == me.pid
        });
        let (kind, previous_run) = match active {
            Some(_) if mine => (StartKind::Reload, None),
            Some(a) if master_identity(a).is_alive() => {
                let master = a.master_pid.load(Relaxed);
                if sys::getppid() != master {
                    return Err(Error::InUse {
                        path: self.path.clone(),
                        master_pid: master,
                    });
                }
                (StartKind::Upgrade, None)
            }
            Some(_) => (StartKind::Restart, Some(RunEnd::Unclean)),
            None => match run {
                RunState::Never => (StartKind::Start, None),
                RunState::Ended(end) => (StartKind::Restart, Some(end)),
                RunState::Running => (StartKind::Restart, Some(RunEnd::Unclean)),
            },
        };
        let free = (0..self.region.capacities().generations)
            .map(|i| self.region.generation(i))
            .find(|g| g.id.load(Relaxed) == 0);
        // Ended generations stop being the newest, which may free a record.
        let ended: Vec<&GenerationRecord> = self
            .region
            .generations()
            .filter(|g| load_state(g) == Some(GenerationState::Exited))
            .collect();
        if free.is_none() && ended.is_empty() {
            return Err(Error::CapacityExhausted {
                what: "generation",
                capacity: self.region.capacities().generations,
            });
        }
        for g in ended {
            self.retire(g);
        }
        let g = (0..self.region.capacities().generations)
            .map(|i| self.region.generation(i))
            .find(|g| g.id.load(Relaxed) == 0)
            .ok_or(Error::CapacityExhausted {
                what: "generation",
                capacity: self.region.capacities().generations,
            })?;
        if kind == StartKind::Start || kind == StartKind::Restart {
            h.run_id.fetch_add(1, Relaxed);
            h.run_state.store(RunState::Running.code(), Relaxed);
        }
        let id = h.next_generation.load(Relaxed).max(1);
        g.kind.store(kind.code(), Relaxed);
        g.master_pid.store(me.pid, Relaxed);
        g.master_start_time.store(me.start_time, Relaxed);
        g.expected_workers.store(config.expected_workers, Relaxed);
        g.registered_ns.store(clock::realtime_ns(), Relaxed);
        g.registered_mono_ns.store(monotonic_ns(), Relaxed);
        g.interval_ms.store(ms(config.interval), Relaxed);
        g.failed_ms.store(ms(config.failed), Relaxed);
        g.start_timeout_ms.store(ms(config.start_timeout), Relaxed);
        g.workers_started.store(0, Relaxed);
        g.respawns.store(0, Relaxed);
        g.crashes.store(0, Relaxed);
        g.exit_reason.store(0, Relaxed);
        g.previous_run
            .store(previous_run.map_or(0, RunEnd::code), Relaxed);
        g.exited_ns.store(0, Relaxed);
        g.committed_ns.store(0, Relaxed);
        g.state.store(GenerationState::Starting.code(), Relaxed);
        g.id.store(id, Release);
        h.next_generation.store(id.saturating_add(1), Release);
        self.emit(
            events,
            id,
            Detail::MasterStart {
                kind,
                previous_run,
                master_pid: me.pid,
            },
        );
        // Generations whose workers all died and that this one now replaces.
        self.end_deserted(events);
        Ok(id)
    }

    /// Registers this process as worker `index` of `generation`. Call it from the
    /// thread that will live as long as the process (its main thread).
    pub fn register_worker(
        &self,
        generation: u64,
        index: u32,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Worker> {
        self.locked(LockOp::RegisterWorker, &mut on_event, |events| {
            self.register_worker_locked(generation, index, events)
        })
    }

    fn register_worker_locked(
        &self,
        generation: u64,
        index: u32,
        events: &mut Vec<Event>,
    ) -> Result<Worker> {
        let me = sys::getpid();
        if let Some((_, slot)) = self
            .region
            .present_slots()
            .find(|(_, s)| s.pid.load(Relaxed) == me)
        {
            return Err(Error::InvalidArgument {
                name: "worker",
                reason: format!(
                    "this process is already registered as worker {}",
                    worker_id(slot)
                ),
            });
        }
        let g = self
            .region
            .find_generation(generation)
            .ok_or(Error::UnknownGeneration(generation))?;
        let caps = self.region.capacities();
        let is_state = |s: &WorkerSlot, state: WorkerState| s.state.load(Relaxed) == state.code();
        let tombstone = (0..caps.workers)
            .map(|i| (i, self.region.slot(i)))
            .find(|(_, s)| {
                is_state(s, WorkerState::Dead)
                    && s.generation.load(Relaxed) == generation
                    && s.index.load(Relaxed) == index
            });
        let candidates = tombstone
            .into_iter()
            .chain(
                (0..caps.workers)
                    .map(|i| (i, self.region.slot(i)))
                    .filter(|(_, s)| is_state(s, WorkerState::Free)),
            )
            .chain(
                (0..caps.workers)
                    .map(|i| (i, self.region.slot(i)))
                    .filter(|(_, s)| is_state(s, WorkerState::Dead)),
            );
        let mut chosen = None;
        for (i, slot) in candidates {
            // A slot whose mutex someone holds is left alone (never expected: the
            // holder would be a live registrant, and registrations hold the lock).
            if slot.mutex.try_lock()? != TryLocked::Busy {
                chosen = Some((i, slot));
                break;
            }
        }
        let (i, slot) = chosen.ok_or(Error::CapacityExhausted {
            what: "worker",
            capacity: caps.workers,
        })?;
        let replaces = (tombstone.map(|(t, _)| t) == Some(i)).then(|| worker_id(slot));
        let identity = Identity::current();
        let now = monotonic_ns();
        slot.pid.store(me, Relaxed);
        slot.generation.store(generation, Relaxed);
        slot.index.store(index, Relaxed);
        slot.start_time.store(identity.start_time, Relaxed);
        slot.registered_ns.store(clock::realtime_ns(), Relaxed);
        slot.heartbeat_mono_ns.store(now, Relaxed);
        slot.hung.store(0, Relaxed);
        slot.hung_since_mono_ns.store(0, Relaxed);
        slot.replaced_pid
            .store(replaces.map_or(0, |w| w.pid), Relaxed);
        // The tombstone's own count, while the slot still holds it.
        let respawns = replaces.map_or(0, |_| slot.respawns.load(Relaxed).saturating_add(1));
        slot.respawns.store(respawns, Relaxed);
        let ppid = sys::getppid();
        slot.ppid.store(ppid, Relaxed);
        slot.state.store(WorkerState::Running.code(), Release);
        self.region
            .header()
            .slot_high_water
            .fetch_max(i + 1, Relaxed);
        // (A master that registers as its own worker is nginx's single-process mode.)
        if me != g.master_pid.load(Relaxed) {
            Self::adopt_master(g, ppid);
        }
        g.workers_started.fetch_add(1, Relaxed);
        // A worker runs the configuration: the server committed it (an upgrade's
        // or a first start's only sign; a reload's master said so already).
        self.commit(g);
        if replaces.is_some() {
            g.respawns.fetch_add(1, Relaxed);
        }
        if matches!(
            load_state(g),
            Some(GenerationState::Starting | GenerationState::Exited)
        ) {
            g.state.store(GenerationState::Running.code(), Release);
        }
        self.region.keep_mapped(true);
        let worker = WorkerId {
            generation,
            pid: me,
            index,
        };
        self.emit(events, generation, Detail::WorkerStart { worker, replaces });
        Ok(Worker {
            slot: i,
            id: worker,
        })
    }

    /// Records that the worker is alive: one atomic store, no lock.
    pub fn heartbeat(&self, worker: &Worker) -> Result<()> {
        let slot = self.region.slot(worker.slot);
        if slot.pid.load(Relaxed) != worker.id.pid {
            return Err(Error::NotRegistered(worker.id.to_string()));
        }
        slot.heartbeat_mono_ns.store(monotonic_ns(), Relaxed);
        Ok(())
    }

    /// The worker exits: `graceful` for a graceful shutdown (reload, upgrade, quit),
    /// `false` for a fast stop. Fires `worker_exit`, and `master_exit` if it was the
    /// last worker of its generation. Call it from the thread that registered.
    pub fn exit_worker(
        &self,
        worker: Worker,
        graceful: bool,
        mut on_event: impl FnMut(&Event),
    ) -> Result<()> {
        self.locked(LockOp::ExitWorker, &mut on_event, |events| {
            self.exit_worker_locked(&worker, graceful, events)
        })
    }

    fn exit_worker_locked(
        &self,
        worker: &Worker,
        graceful: bool,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        let slot = self.own_slot(worker)?;
        let announced = slot.state.load(Relaxed) == WorkerState::Exiting.code();
        // An announced worker's generation may have ended and been retired since:
        // then only the slot is left to free.
        let g = self.region.find_generation(worker.id.generation);
        if g.is_none() && !announced {
            return Err(Error::UnknownGeneration(worker.id.generation));
        }
        // First, so that a call from the wrong thread (EPERM) changes nothing.
        slot.mutex.unlock()?;
        if let (Some(g), false) = (g, announced) {
            self.report_exit(worker, g, graceful, events);
            crash_point("after-entry", EventKind::WorkerExit);
        }
        slot.state.store(WorkerState::Free.code(), Release);
        self.region.keep_mapped(false);
        if let Some(g) = g {
            // Its master outlives its workers unless it was killed (the workers
            // then run on as orphans): then the run did not end cleanly.
            self.end_if_last(g, master_identity(g).is_alive(), events);
        }
        Ok(())
    }

    /// A worker of `g` left: `master_exit` if it was the last.
    fn end_if_last(&self, g: &GenerationRecord, clean: bool, events: &mut Vec<Event>) {
        if self.region.census().present(g.id.load(Relaxed)) == 0
            && load_state(g) != Some(GenerationState::Exited)
        {
            self.master_exit(g, clean, events);
        }
    }

    /// The slot of this process's worker, checked.
    fn own_slot(&self, worker: &Worker) -> Result<&WorkerSlot> {
        let slot = self.region.slot(worker.slot);
        let state = slot.state.load(Relaxed);
        let present = state == WorkerState::Running.code() || state == WorkerState::Exiting.code();
        if !present || worker_id(slot) != worker.id {
            return Err(Error::NotRegistered(worker.id.to_string()));
        }
        Ok(slot)
    }

    /// The slot and generation of this process's worker, checked.
    fn own_slot_and_generation(&self, worker: &Worker) -> Result<(&WorkerSlot, &GenerationRecord)> {
        let slot = self.own_slot(worker)?;
        let g = self
            .region
            .find_generation(worker.id.generation)
            .ok_or(Error::UnknownGeneration(worker.id.generation))?;
        Ok((slot, g))
    }

    /// Fires `worker_exit` for a Running worker (which it counts) and drains its
    /// generation.
    fn report_exit(
        &self,
        worker: &Worker,
        g: &GenerationRecord,
        graceful: bool,
        events: &mut Vec<Event>,
    ) {
        let reason = if graceful {
            self.successor_reason(g)
        } else {
            ExitReason::FastStop
        };
        let _ = g
            .exit_reason
            .compare_exchange(0, reason.code(), Relaxed, Relaxed);
        g.state.store(GenerationState::Draining.code(), Release);
        let generation = worker.id.generation;
        self.emit(
            events,
            generation,
            Detail::WorkerExit {
                worker: worker.id,
                reason,
            },
        );
    }

    /// The worker has begun a graceful shutdown but its process goes on (nginx: the
    /// premature timer, while connections drain). Fires `worker_exit` now, stops
    /// counting the worker in `n_mine`, and leaves the rest to its real exit:
    /// [`Registry::exit_worker`] if it gets to call it, or else the sweep that sees
    /// its process gone, which then fires `master_exit` if it was the last. When the
    /// node is stopping (nothing replaces the generation), no process may be left to
    /// see the end, so the last worker to announce fires `master_exit` itself.
    pub fn announce_exit(&self, worker: &Worker, mut on_event: impl FnMut(&Event)) -> Result<()> {
        self.locked(LockOp::ExitWorker, &mut on_event, |events| {
            let (slot, g) = self.own_slot_and_generation(worker)?;
            if slot.state.load(Relaxed) != WorkerState::Running.code() {
                return Ok(());
            }
            self.report_exit(worker, g, true, events);
            slot.state.store(WorkerState::Exiting.code(), Release);
            if self.region.census().live(worker.id.generation) == 0
                && self.successor_reason(g) == ExitReason::Stop
            {
                self.master_exit(g, true, events);
            }
            Ok(())
        })
    }

    /// A process closed the configuration of `generation` (nginx: the end of its Lua
    /// VM, which nginx runs whenever it destroys a configuration; see
    /// `docs/design.md` 4.6). In the master, when a newer configuration of it is
    /// loading, nginx has committed that one (a reload, before its workers are
    /// forked): both are committed. Otherwise, in the process that registered it, a
    /// configuration not committed was given up (a port that cannot be bound, an
    /// error later in `init_by_lua`): the generation is aborted at once,
    /// `generation_abort` with cause `failed`. Anything else (the master's exit, a
    /// cache manager's start) changes nothing.
    pub fn configuration_closed(
        &self,
        generation: u64,
        mut on_event: impl FnMut(&Event),
    ) -> Result<()> {
        self.locked(LockOp::RegisterGeneration, &mut on_event, |events| {
            let Some(g) = self.region.find_generation(generation) else {
                return Ok(());
            };
            let me = sys::getpid();
            let loading = self
                .region
                .generations()
                .filter(|n| {
                    n.id.load(Relaxed) > generation
                        && n.master_pid.load(Relaxed) == me
                        && !committed(n)
                        && load_state(n) == Some(GenerationState::Starting)
                })
                .max_by_key(|n| n.id.load(Relaxed));
            if let Some(n) = loading {
                // A reload: nginx closes the previous configuration once it has
                // committed the next. The previous one served, even if none of its
                // workers had registered yet.
                self.commit(g);
                self.commit(n);
            } else if !committed(g)
                && g.master_pid.load(Relaxed) == me
                && load_state(g) == Some(GenerationState::Starting)
            {
                // Only the process that registered it can have given it up: a
                // cache manager, which closes its copy of the VM as it starts,
                // knows nothing of it.
                self.abort(g, AbortCause::Failed, events);
            }
            Ok(())
        })
    }

    /// The master committed the configuration of `generation` it registered, as
    /// [`Registry::configuration_closed`] of the previous one does: for servers
    /// other than nginx, which know when a new configuration takes over.
    pub fn commit_generation(
        &self,
        generation: u64,
        mut on_event: impl FnMut(&Event),
    ) -> Result<()> {
        self.locked(LockOp::RegisterGeneration, &mut on_event, |_| {
            let g = self
                .region
                .find_generation(generation)
                .ok_or(Error::UnknownGeneration(generation))?;
            self.commit(g);
            Ok(())
        })
    }

    /// Looks for dead workers, hung workers, deserted and stalled generations, and
    /// reports what it finds. Call it periodically (a worker's tick) and whenever a
    /// child is known to have died (a master's SIGCHLD).
    pub fn sweep(&self, mut on_event: impl FnMut(&Event)) -> Result<()> {
        self.locked(LockOp::Sweep, &mut on_event, |_| Ok(()))
    }

    /// [`Registry::sweep`] if the lock is free right now; `Ok(false)` without waiting
    /// when another process holds it. For periodic sweeps (a worker's tick): the
    /// holder sweeps as part of whatever it does, or the next tick will, and a tick
    /// never blocks its process behind someone else's callback.
    pub fn try_sweep(&self, mut on_event: impl FnMut(&Event)) -> Result<bool> {
        match self.acquire(LockOp::Sweep, false, Delivery::Callbacks)? {
            Some(guard) => self
                .run_locked(guard, &mut on_event, |_| Ok(()))
                .map(|()| true),
            None => Ok(false),
        }
    }

    /// Runs `f` under the registry lock, serialised with every lifecycle operation
    /// and callback of the node. Re-entrant: `f` may call the registry. Should the
    /// previous holder have died, the repair's events go to the journal, and to the
    /// callbacks of the next operation.
    pub fn with_lock<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let guard = self.lock(LockOp::User, Delivery::None)?;
        let value = f();
        drop(guard);
        Ok(value)
    }

    /// Takes the registry lock and keeps it until the returned hold is dropped, for
    /// bindings that must run their own callbacks between operations under one
    /// holding (the Lua module). Re-entrant like every operation. The events of a
    /// repair, should the previous holder have died, are returned with it.
    pub fn hold_lock(&self) -> Result<(LockHold<'_>, Vec<Event>)> {
        let guard = self.lock(LockOp::User, Delivery::Callbacks)?;
        Ok(Self::hold(guard))
    }

    /// Takes the registry lock for a binding that cannot keep a borrow of the
    /// registry while it holds it (a C caller): like [`Registry::hold_lock`], but held
    /// until [`Registry::release_lock`]. Without `wait`, `None` at once when another
    /// process holds it. The events of a repair, should the previous holder have
    /// died, are returned.
    pub fn acquire_lock(&self, wait: bool) -> Result<Option<Vec<Event>>> {
        Ok(self
            .acquire(LockOp::User, wait, Delivery::Callbacks)?
            .map(|mut guard| {
                let recovered = std::mem::take(&mut guard.recovered);
                // Released by `release_lock`, which drops a guard of its own.
                std::mem::forget(guard);
                recovered
            }))
    }

    /// Releases one [`Registry::acquire_lock`].
    pub fn release_lock(&self) -> Result<()> {
        if self.depth.get() == 0 {
            return Err(Error::InvalidArgument {
                name: "lock",
                reason: "this process does not hold the registry lock".into(),
            });
        }
        drop(LockGuard {
            reg: self,
            recovered: Vec::new(),
        });
        Ok(())
    }

    /// Records that the callbacks of the event numbered `seq` have run, so that it
    /// is not delivered again should this process die before it releases the lock.
    /// For bindings that run callbacks under [`Registry::hold_lock`]; the callbacks
    /// of an operation's own `on_event` are recorded as they return. Does nothing
    /// unless this process holds the lock.
    pub fn delivered(&self, seq: u64) {
        if self.depth.get() > 0 {
            self.region
                .header()
                .delivered_seq
                .fetch_max(seq.saturating_add(1), Relaxed);
        }
    }

    fn hold(mut guard: LockGuard<'_>) -> (LockHold<'_>, Vec<Event>) {
        let recovered = std::mem::take(&mut guard.recovered);
        (LockHold { _guard: guard }, recovered)
    }

    /// A consistent picture of the registry, taken under the lock (no sweep).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let guard = self.lock(LockOp::Snapshot, Delivery::None)?;
        let snapshot = snapshot::capture(&self.region);
        drop(guard);
        Ok(snapshot)
    }

    /// A picture of the registry that never waits for the lock: taken under it when
    /// this process already holds it (inside a callback), otherwise read lock-free
    /// like [`Registry::observe`].
    pub fn status(&self) -> Result<Snapshot> {
        if self.depth.get() > 0 {
            self.snapshot()
        } else {
            Ok(self.observe())
        }
    }

    /// The same picture read without the lock, as the CLI reads it: never waits
    /// behind a callback that holds the lock (see [`crate::Observer`]). `consistent`
    /// tells whether a writer's change was in progress throughout.
    pub fn observe(&self) -> Snapshot {
        snapshot::observe(&self.region)
    }

    /// Journal entries from sequence number `from` on, oldest first, read without the
    /// lock. Entries the ring has overwritten are skipped.
    pub fn events_since(&self, from: u64) -> Vec<Event> {
        journal::since(&self.region, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `registry_file` fuzz target: numbers no build writes, but that a
    /// damaged file may hold, overflowed (a panic with overflow checks, a wrong
    /// result without).
    #[test]
    fn extreme_numbers_in_the_file_neither_overflow_nor_panic() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path().join("r.wm"), &Options::default()).unwrap();
        let generation = registry
            .register_generation(&GenerationConfig::default(), |_| {})
            .unwrap();
        let g = registry.region.find_generation(generation).unwrap();
        g.interval_ms.store(u64::MAX, Relaxed);
        g.failed_ms.store(u64::MAX, Relaxed);
        let h = registry.region.header();
        h.next_seq.store(u64::MAX, Relaxed);
        h.next_generation.store(u64::MAX, Relaxed);
        let worker = registry.register_worker(generation, 0, |_| {}).unwrap();
        registry.sweep(|_| {}).unwrap();
        registry.exit_worker(worker, true, |_| {}).unwrap();
        assert!(registry
            .register_generation(&GenerationConfig::default(), |_| {})
            .is_ok());
        assert_eq!(h.next_seq.load(Relaxed), u64::MAX);
    }
}
