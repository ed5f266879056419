//! The registry: the lifecycle operations over the shared region.
//!
//! Every operation is the same few steps: take the registry lock (`holding`, which
//! also repairs the registry if the previous holder died), decode the region, probe
//! the slot mutexes, let the rules (`rules`) sweep and then do the operation on the
//! decoded state, have `apply` write the plan in order, and hand the events to the
//! caller's callback, still under the lock. This module is safe code.

mod holding;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::apply::apply;
use crate::change::Change;
use crate::clock::{self, monotonic_ns, realtime_ns};
use crate::error::{Error, Result};
use crate::event::{Event, WorkerId};
use crate::leader::LeaderWord;
use crate::lifecycle::{Detection, LockOp};
use crate::lock::TryLocked;
use crate::process::Identity;
use crate::region::layout::CRASH_TIMES;
use crate::region::map::{FileId, Region};
use crate::region::{Capacities, Opened};
use crate::rules::{self, Caller, CrashLoopRule, Now, Plan, Processes, Settings, SlotProbe, State};
use crate::snapshot::{self, Snapshot};
use crate::sys;
use crate::tables;

use holding::{Delivery, LockGuard};

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
    /// A worker index is in a crash loop when it crashes more than this many times
    /// within `crash_loop_period` (0: never; at most [`MAX_CRASH_LOOP_INTENSITY`]).
    /// The rule is node-wide: the newest generation's applies.
    pub crash_loop_intensity: u32,
    /// The crash loop's window, and how long an index must go without a crash for
    /// its loop to end.
    pub crash_loop_period: Duration,
}

/// The largest crash-loop intensity: the registry keeps this many crash times, plus
/// one, per worker index.
pub const MAX_CRASH_LOOP_INTENSITY: u32 = CRASH_TIMES as u32 - 1;

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            interval: Duration::from_secs(10),
            failed: Duration::from_secs(5),
            start_timeout: Duration::from_secs(60),
            expected_workers: 0,
            crash_loop_intensity: 5,
            crash_loop_period: Duration::from_secs(30),
        }
    }
}

impl GenerationConfig {
    fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("interval", self.interval),
            ("failed", self.failed),
            ("start_timeout", self.start_timeout),
            ("crash_loop_period", self.crash_loop_period),
        ] {
            if value.is_zero() || value > Duration::from_secs(86_400) {
                return Err(Error::InvalidArgument {
                    name,
                    reason: format!("{value:?} is outside (0 s, 1 day]"),
                });
            }
        }
        if self.crash_loop_intensity > MAX_CRASH_LOOP_INTENSITY {
            return Err(Error::InvalidArgument {
                name: "crash_loop_intensity",
                reason: format!(
                    "{} is outside [0, {MAX_CRASH_LOOP_INTENSITY}]",
                    self.crash_loop_intensity
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn settings(&self) -> Settings {
        Settings {
            interval_ms: clock::millis(self.interval),
            failed_ms: clock::millis(self.failed),
            start_timeout_ms: clock::millis(self.start_timeout),
            expected_workers: self.expected_workers,
            crash_loop: CrashLoopRule {
                intensity: self.crash_loop_intensity,
                period_ms: clock::millis(self.crash_loop_period),
            },
        }
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

    /// Its slot in the registry, which the leader word names.
    pub fn slot_index(&self) -> u32 {
        self.slot
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
    /// The memory of the last operation's decoded state, reused by the next.
    scratch: Cell<State>,
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

/// The system's answers to the rules' questions about processes.
struct System;

impl Processes for System {
    fn alive(&self, who: Identity) -> bool {
        who.is_alive()
    }

    fn identity(&self, pid: u32) -> Option<Identity> {
        Identity::of(pid)
    }
}

fn caller() -> Caller {
    Caller {
        me: Identity::current(),
        parent: sys::getppid(),
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

impl Registry {
    /// Opens the registry file at `path`, creating it if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero lock timeout or bad capacities; any
    /// file error of the opening (see [`Error`]): the path is a symlink or not a
    /// regular file, it is owned by another user, it holds another layout or a
    /// damaged header, the file system is full.
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
            scratch: Cell::default(),
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
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero timeout.
    pub fn set_lock_timeout(&self, timeout: Duration) -> Result<()> {
        check_lock_timeout(timeout)?;
        self.lock_timeout.set(timeout);
        Ok(())
    }

    pub fn capacities(&self) -> Capacities {
        self.region.capacities()
    }

    // ----- the shell around the rules ------------------------------------------

    /// A plan over the registry as it is now, and what the mutexes of its present
    /// slots say. The caller holds the lock.
    fn plan(&self) -> Result<(Plan, Vec<SlotProbe>)> {
        let now = Now {
            mono: monotonic_ns(),
            real: realtime_ns(),
        };
        let mut state = self.scratch.take();
        tables::decode_into(&self.region, &mut state);
        let probes = state.present_slots().map(|s| self.probe(s.slot)).collect();
        let plan = Plan::new(state, now);
        match probes {
            Ok(probes) => Ok((plan, probes)),
            Err(e) => {
                self.scratch.set(plan.into_parts().0);
                Err(e)
            }
        }
    }

    /// Writes `plan` to the mapping; returns its events.
    fn apply(&self, plan: Plan) -> Vec<Event> {
        let (state, steps) = plan.into_parts();
        self.scratch.set(state);
        apply(&self.region, steps)
    }

    /// Tries the mutex of a present slot: held by its live process, or free (or left
    /// by its dead owner), which the kernel says only of a process that is gone.
    fn probe(&self, slot: u32) -> Result<SlotProbe> {
        let mutex = self.region.slot_mutex(slot);
        let gone = match mutex.try_lock()? {
            TryLocked::Busy => return Ok((slot, None)),
            TryLocked::OwnerDied => Detection::OwnerDied,
            TryLocked::Acquired => Detection::Abandoned,
        };
        mutex.unlock()?;
        Ok((slot, Some(gone)))
    }

    /// Runs `op` under the lock: a sweep, then `body`'s rules; hands the events (a
    /// repair's first) to `on_event`, still under the lock.
    fn locked<T>(
        &self,
        op: LockOp,
        on_event: &mut dyn FnMut(&Event),
        body: impl FnOnce(&mut Plan) -> Result<T>,
    ) -> Result<T> {
        let guard = self.lock(op, Delivery::Callbacks)?;
        self.run_locked(guard, on_event, body)
    }

    /// Under the lock `guard` holds: plans a sweep and `body`, applies the plan
    /// (also when `body` fails: the rules refuse before they change anything of
    /// their own, and the sweep's findings stand), hands the events (a repair's first) to
    /// `on_event`, still under the lock, then releases it.
    fn run_locked<T>(
        &self,
        mut guard: LockGuard<'_>,
        on_event: &mut dyn FnMut(&Event),
        body: impl FnOnce(&mut Plan) -> Result<T>,
    ) -> Result<T> {
        let mut events = std::mem::take(&mut guard.recovered);
        let change = Change::begin(self.region.header());
        let outcome = self.plan().and_then(|(mut plan, probes)| {
            rules::sweep(&mut plan, &probes, 0, sys::getpid(), &System);
            let outcome = body(&mut plan);
            rules::lead(&mut plan);
            events.extend(self.apply(plan));
            outcome
        });
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
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a setting out of range; [`Error::InUse`] when
    /// another live master, not this process's parent, has a generation (two servers
    /// given one registry); [`Error::CapacityExhausted`] when every generation record
    /// is in use; the lock's errors ([`Error::LockTimeout`] and the like).
    pub fn register_generation(
        &self,
        config: &GenerationConfig,
        mut on_event: impl FnMut(&Event),
    ) -> Result<u64> {
        config.validate()?;
        let settings = config.settings();
        self.locked(LockOp::RegisterGeneration, &mut on_event, |plan| {
            rules::register_generation(plan, settings, caller(), &self.path, &System)
        })
    }

    /// Registers this process as worker `index` of `generation`. Call it from the
    /// thread that will live as long as the process (its main thread).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownGeneration`]; [`Error::InvalidArgument`] when this process is
    /// registered already; [`Error::CapacityExhausted`] when no slot is free; the
    /// lock's errors.
    pub fn register_worker(
        &self,
        generation: u64,
        index: u32,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Worker> {
        self.locked(LockOp::RegisterWorker, &mut on_event, |plan| {
            let caller = caller();
            let candidates = rules::worker_slots(plan.state(), generation, index, caller.me.pid)?;
            let mut chosen = None;
            for slot in candidates {
                // A slot whose mutex someone holds is left alone (never expected: the
                // holder would be a live registrant, and registrations hold the lock).
                if self.region.slot_mutex(slot).try_lock()? != TryLocked::Busy {
                    chosen = Some(slot);
                    break;
                }
            }
            let slot = chosen.ok_or(Error::CapacityExhausted {
                what: "worker",
                capacity: self.region.capacities().workers,
            })?;
            let id = rules::register_worker(plan, generation, index, slot, caller, &System)?;
            self.region.keep_mapped(true);
            Ok(Worker { slot, id })
        })
    }

    /// Records that the worker is alive: one atomic store, no lock.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] when its slot no longer holds this worker.
    pub fn heartbeat(&self, worker: &Worker) -> Result<()> {
        let slot = self.region.slot(worker.slot);
        if slot.pid.load(Relaxed) != worker.id.pid {
            return Err(Error::NotRegistered(worker.id.to_string()));
        }
        slot.heartbeat_mono_ns.store(monotonic_ns(), Relaxed);
        Ok(())
    }

    /// Whether `worker` is the node's leader now: one atomic load, no lock, no system
    /// call (`docs/design.md` 4.9). A worker that lost the leadership (it hung, it
    /// began its exit) sees it at once.
    pub fn is_leader(&self, worker: &Worker) -> bool {
        self.leader_word().is(worker.slot)
    }

    /// The leader word: the leader's slot, the term and the cause of the last change,
    /// read with one atomic load. A worker compares it with the last one it saw to
    /// learn of a change without the lock.
    pub fn leader_word(&self) -> LeaderWord {
        self.region.leader_word()
    }

    /// The node's leader (read without the lock: the slot the leader word names, if
    /// it still holds the leader's process) and the leader word.
    pub fn leader(&self) -> (Option<WorkerId>, LeaderWord) {
        self.region.leader()
    }

    /// The worker began its graceful exit while its process goes on (nginx: its
    /// pending timers run early): it is no longer elected, and if it leads, the
    /// leadership moves now, `leader_elected` with the exit's cause.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] when its slot no longer holds this worker; the lock's
    /// errors.
    pub fn resign(&self, worker: &Worker, mut on_event: impl FnMut(&Event)) -> Result<()> {
        self.locked(LockOp::ExitWorker, &mut on_event, |plan| {
            rules::resign(plan, worker.slot, worker.id)
        })
    }

    /// The worker exits: `graceful` for a graceful shutdown (reload, upgrade, quit),
    /// `false` for a fast stop. Fires `worker_exit`, and `master_exit` if it was the
    /// last worker of its generation. Call it from the thread that registered.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] when its slot no longer holds this worker;
    /// [`Error::UnknownGeneration`] when its generation is gone; a system error when
    /// called from a thread that does not hold the slot; the lock's errors.
    pub fn exit_worker(
        &self,
        worker: Worker,
        graceful: bool,
        mut on_event: impl FnMut(&Event),
    ) -> Result<()> {
        self.locked(LockOp::ExitWorker, &mut on_event, |plan| {
            rules::may_exit(plan.state(), worker.slot, worker.id)?;
            // Before any change, so that a call from the wrong thread (EPERM)
            // changes nothing.
            self.region.slot_mutex(worker.slot).unlock()?;
            rules::exit_worker(plan, worker.slot, worker.id, graceful, &System)?;
            self.region.keep_mapped(false);
            Ok(())
        })
    }

    /// The worker has begun a graceful shutdown but its process goes on (nginx: the
    /// premature timer, while connections drain). Fires `worker_exit` now, stops
    /// counting the worker in `n_mine`, and leaves the rest to its real exit:
    /// [`Registry::exit_worker`] if it gets to call it, or else the sweep that sees
    /// its process gone, which then fires `master_exit` if it was the last. When the
    /// node is stopping (nothing replaces the generation), no process may be left to
    /// see the end, so the last worker to announce fires `master_exit` itself.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`], [`Error::UnknownGeneration`], the lock's errors.
    pub fn announce_exit(&self, worker: &Worker, mut on_event: impl FnMut(&Event)) -> Result<()> {
        self.locked(LockOp::ExitWorker, &mut on_event, |plan| {
            rules::announce_exit(plan, worker.slot, worker.id)
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
    ///
    /// # Errors
    ///
    /// The lock's errors.
    pub fn configuration_closed(
        &self,
        generation: u64,
        mut on_event: impl FnMut(&Event),
    ) -> Result<()> {
        self.locked(LockOp::RegisterGeneration, &mut on_event, |plan| {
            rules::configuration_closed(plan, generation, sys::getpid());
            Ok(())
        })
    }

    /// The master committed the configuration of `generation` it registered, as
    /// [`Registry::configuration_closed`] of the previous one does: for servers
    /// other than nginx, which know when a new configuration takes over.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownGeneration`], the lock's errors.
    pub fn commit_generation(
        &self,
        generation: u64,
        mut on_event: impl FnMut(&Event),
    ) -> Result<()> {
        self.locked(LockOp::RegisterGeneration, &mut on_event, |plan| {
            rules::commit_generation(plan, generation)
        })
    }

    /// Looks for dead workers, hung workers, deserted and stalled generations, and
    /// reports what it finds. Call it periodically (a worker's tick) and whenever a
    /// child is known to have died (a master's SIGCHLD).
    ///
    /// # Errors
    ///
    /// The lock's errors.
    pub fn sweep(&self, mut on_event: impl FnMut(&Event)) -> Result<()> {
        self.locked(LockOp::Sweep, &mut on_event, |_| Ok(()))
    }

    /// [`Registry::sweep`] if the lock is free right now; `Ok(false)` without waiting
    /// when another process holds it. For periodic sweeps (a worker's tick): the
    /// holder sweeps as part of whatever it does, or the next tick will, and a tick
    /// never blocks its process behind someone else's callback.
    ///
    /// # Errors
    ///
    /// The lock's errors other than a wait.
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
    ///
    /// # Errors
    ///
    /// The lock's errors; `f` does not run.
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
    ///
    /// # Errors
    ///
    /// The lock's errors.
    pub fn hold_lock(&self) -> Result<(LockHold<'_>, Vec<Event>)> {
        let mut guard = self.lock(LockOp::User, Delivery::Callbacks)?;
        let recovered = std::mem::take(&mut guard.recovered);
        Ok((LockHold { _guard: guard }, recovered))
    }

    /// Takes the registry lock for a binding that cannot keep a borrow of the
    /// registry while it holds it (a C caller): like [`Registry::hold_lock`], but held
    /// until [`Registry::release_lock`]. Without `wait`, `None` at once when another
    /// process holds it. The events of a repair, should the previous holder have
    /// died, are returned.
    ///
    /// # Errors
    ///
    /// The lock's errors.
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
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when this process does not hold the lock.
    pub fn release_lock(&self) -> Result<()> {
        if self.depth.get() == 0 {
            return Err(Error::InvalidArgument {
                name: "lock",
                reason: "this process does not hold the registry lock".into(),
            });
        }
        drop(LockGuard::nested(self));
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

    /// A consistent picture of the registry, taken under the lock (no sweep).
    ///
    /// # Errors
    ///
    /// The lock's errors.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let guard = self.lock(LockOp::Snapshot, Delivery::None)?;
        let snapshot = snapshot::capture(&self.region);
        drop(guard);
        Ok(snapshot)
    }

    /// A picture of the registry that never waits for the lock: taken under it when
    /// this process already holds it (inside a callback), otherwise read lock-free
    /// like [`Registry::observe`].
    ///
    /// # Errors
    ///
    /// The lock's errors, inside a callback only.
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
        crate::journal::since(&self.region, from)
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
