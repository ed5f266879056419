//! Holding the registry lock: the guard, re-entrancy, the delivery of events to
//! callbacks (`docs/design.md` 4.5), and the repair after a holder died (4.4).

use std::sync::atomic::Ordering::Relaxed;

use crate::change::Change;
use crate::clock::monotonic_ns;
use crate::error::Result;
use crate::event::Event;
use crate::journal;
use crate::lifecycle::{LockOp, WorkerState};
use crate::lock::{Acquisition, LockFailure, Locked, TryLocked};
use crate::region::layout::Stat;
use crate::rules;
use crate::sys;

use super::{Registry, System};

/// Whether a holding of the lock hands events to callbacks. One that does takes the
/// node-level events no callback has run yet, flagged `redelivered`, and its normal
/// release records everything journalled as delivered; one that does not
/// (`snapshot`, `with_lock`) leaves them for the next that does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    Callbacks,
    None,
}

/// The registry lock, held. Only the outermost guard of a process unlocks.
pub(super) struct LockGuard<'r> {
    reg: &'r Registry,
    /// Events of a repair after the previous holder died, delivered with the
    /// operation's own.
    pub(super) recovered: Vec<Event>,
}

impl<'r> LockGuard<'r> {
    /// One more holding by this process, which holds the lock already.
    pub(super) fn nested(reg: &'r Registry) -> LockGuard<'r> {
        LockGuard {
            reg,
            recovered: Vec::new(),
        }
    }
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
            let _ = self.reg.region.lock().unlock();
        }
    }
}

impl Registry {
    pub(super) fn lock(&self, op: LockOp, delivery: Delivery) -> Result<LockGuard<'_>> {
        Ok(self
            .acquire(op, true, delivery)?
            .expect("a waiting acquisition holds the lock or fails"))
    }

    /// Takes the registry lock, waiting up to the lock timeout if `wait`, else only
    /// if it is free (`None` when another process holds it). The guard carries the
    /// events to hand over first: with `Delivery::Callbacks`, those no callback has
    /// run yet; and a repair's, should the previous holder have died.
    pub(super) fn acquire(
        &self,
        op: LockOp,
        wait: bool,
        delivery: Delivery,
    ) -> Result<Option<LockGuard<'_>>> {
        if self.depth.get() > 0 {
            self.depth.set(self.depth.get() + 1);
            return Ok(Some(LockGuard::nested(self)));
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
            self.region
                .lock()
                .lock(self.lock_timeout.get())
                .map_err(failed)?
        } else {
            match self.region.lock().lock_now().map_err(failed)? {
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
        let mut guard = LockGuard::nested(self);
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
    /// the journal head and counters, slot mutexes left behind by a half-done
    /// registration, then the rules' repair (what follows the newest entry, the
    /// generation counter, `lock_recovered`, a sweep that reports the dead). The
    /// events: with `Delivery::Callbacks`, first those whose callbacks no holder ran;
    /// then the repair's own.
    fn repair(&self, holder_pid: u32, holder_op: LockOp, delivery: Delivery) -> Result<Vec<Event>> {
        journal::repair(&self.region);
        let mut events = match delivery {
            Delivery::Callbacks => self.undelivered(),
            Delivery::None => Vec::new(),
        };
        for i in 0..self.region.capacities().workers {
            let mutex = self.region.slot_mutex(i);
            if self.region.slot(i).state.load(Relaxed) != WorkerState::Running.code()
                && mutex.try_lock()? != TryLocked::Busy
            {
                mutex.unlock()?;
            }
        }
        let last = journal::last(&self.region);
        let (mut plan, probes) = self.plan()?;
        rules::repair(
            &mut plan,
            last.as_ref(),
            (holder_pid, holder_op),
            &probes,
            sys::getpid(),
            &System,
        );
        events.extend(self.apply(plan));
        Ok(events)
    }
}
