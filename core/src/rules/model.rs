//! A node in memory, for tests: the registry's rules driven over plain values, with
//! processes that are rows of a table, slot mutexes that remember their holder, and
//! a clock that moves only when told. It runs the same rules as [`crate::Registry`]
//! through the same steps (lock, repair if the holder died, probe, sweep, the
//! operation, apply), so a test can run thousands of sequences in a second, and
//! compare them with the real registry over real processes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock;
use crate::error::{Error, Result};
use crate::event::{Event, WorkerId};
use crate::lifecycle::{Detection, GenerationState, LockOp, RunState, WorkerState};
use crate::process::Identity;
use crate::region::Capacities;
use crate::registry::GenerationConfig;

use super::state::{Node, Slot, State};
use super::{Caller, Now, Plan, Processes, SlotProbe, Step};

#[derive(Debug, Clone, Copy)]
struct Process {
    identity: Identity,
    parent: u32,
    alive: bool,
}

/// The process table.
#[derive(Debug, Default, Clone)]
struct Table(BTreeMap<u32, Process>);

impl Processes for Table {
    fn alive(&self, who: Identity) -> bool {
        self.0
            .get(&who.pid)
            .is_some_and(|p| p.alive && (who.start_time == 0 || p.identity == who))
    }

    fn identity(&self, pid: u32) -> Option<Identity> {
        self.0.get(&pid).filter(|p| p.alive).map(|p| p.identity)
    }
}

/// A node of processes sharing one registry, in memory.
#[derive(Debug, Clone)]
pub struct Model {
    state: State,
    journal: Vec<Event>,
    now: Now,
    processes: Table,
    /// Slot mutexes and the pid holding each.
    mutexes: BTreeMap<u32, u32>,
    /// The registration of each worker process: its slot and id.
    workers: BTreeMap<u32, (u32, WorkerId)>,
    /// The registry lock's holder died holding it, doing this.
    dead_holder: Option<(u32, LockOp)>,
    /// Start times handed out: each process gets a new one.
    started: u64,
}

impl Model {
    /// A fresh registry of these capacities (every slot decoded: the model has no
    /// high-water mark to save work).
    pub fn new(capacities: Capacities) -> Model {
        let state = State {
            node: Node {
                run: Some(RunState::Never),
                next_generation: 1,
                ..Node::default()
            },
            generations: Vec::new(),
            free: (0..capacities.generations).collect(),
            slots: (0..capacities.workers)
                .map(|slot| Slot {
                    slot,
                    state: Some(WorkerState::Free),
                    ..Slot::default()
                })
                .collect(),
            slot_capacity: capacities.workers,
            histories: Vec::new(),
        };
        Model {
            state,
            journal: Vec::new(),
            now: Now {
                mono: 1_000_000_000,
                real: 1_700_000_000_000_000_000,
            },
            processes: Table::default(),
            mutexes: BTreeMap::new(),
            workers: BTreeMap::new(),
            dead_holder: None,
            started: 0,
        }
    }

    /// A new live process `pid`, child of `parent`.
    pub fn spawn(&mut self, pid: u32, parent: u32) {
        self.started += 1;
        let identity = Identity {
            pid,
            start_time: self.started,
        };
        self.processes.0.insert(
            pid,
            Process {
                identity,
                parent,
                alive: true,
            },
        );
    }

    /// `pid` dies (`kill -9`): the mutexes it holds are left to their owner-died
    /// state.
    pub fn kill(&mut self, pid: u32) {
        if let Some(p) = self.processes.0.get_mut(&pid) {
            p.alive = false;
        }
    }

    pub fn is_alive(&self, pid: u32) -> bool {
        self.processes.0.get(&pid).is_some_and(|p| p.alive)
    }

    /// Time passes.
    pub fn advance(&mut self, by: Duration) {
        self.now.mono = self.now.mono.saturating_add(clock::nanos(by));
        self.now.real = self.now.real.saturating_add(clock::nanos(by));
    }

    /// The worker process `pid` beats (no lock).
    pub fn heartbeat(&mut self, pid: u32) {
        if let Some(&(slot, id)) = self.workers.get(&pid) {
            let s = &mut self.state.slots[slot as usize];
            if s.pid == id.pid {
                s.heartbeat_mono_ns = self.now.mono;
            }
        }
    }

    /// Every journalled event, in order.
    pub fn events(&self) -> &[Event] {
        &self.journal
    }

    /// The live (Running) workers the registry counts for `generation`.
    pub fn live(&self, generation: u64) -> u32 {
        self.state.census().live(generation)
    }

    /// The generations in use: id, state, committed.
    pub fn generations(&self) -> Vec<(u64, Option<GenerationState>, bool)> {
        let mut all: Vec<_> = self
            .state
            .records()
            .map(|g| (g.id, g.state, g.committed()))
            .collect();
        all.sort_unstable_by_key(|g| g.0);
        all
    }

    /// The slots in use: worker, state.
    pub fn slots(&self) -> Vec<(WorkerId, WorkerState)> {
        self.state
            .slots
            .iter()
            .filter_map(|s| Some((s.worker(), s.state?)))
            .filter(|(_, state)| *state != WorkerState::Free)
            .collect()
    }

    pub fn run_state(&self) -> Option<RunState> {
        self.state.node.run
    }

    fn caller(&self, pid: u32) -> Caller {
        let p = self.processes.0[&pid];
        Caller {
            me: p.identity,
            parent: p.parent,
        }
    }

    /// Trylocks every present slot's mutex, as the registry does.
    fn probe(&mut self, state: &State) -> Vec<SlotProbe> {
        state
            .present_slots()
            .map(|s| {
                let gone = match self.mutexes.get(&s.slot) {
                    Some(&holder) if self.is_alive(holder) => return (s.slot, None),
                    Some(_) => Detection::OwnerDied,
                    None => Detection::Abandoned,
                };
                self.mutexes.remove(&s.slot);
                (s.slot, Some(gone))
            })
            .collect()
    }

    /// Writes the first `limit` steps (all with `None`) to the state and journal.
    fn apply(&mut self, steps: Vec<Step>, limit: Option<usize>) {
        for step in steps.into_iter().take(limit.unwrap_or(usize::MAX)) {
            match step {
                Step::Journal(mut event) => {
                    event.seq = self.journal.len() as u64 + 1;
                    self.journal.push(event);
                }
                Step::Node { after, .. } => self.state.node = after,
                Step::Generation { after, .. } => self.state.set_record(after),
                Step::Slot { after, .. } => self.state.slots[after.slot as usize] = after,
                Step::History { after, .. } => self.state.set_history(after),
            }
        }
    }

    /// One locked operation by `pid`: the repair if the previous holder died, a
    /// sweep, `body`, then its plan applied. With `dies_after`, `pid` is killed
    /// holding the lock once that many steps are written.
    fn operation<T>(
        &mut self,
        pid: u32,
        op: LockOp,
        dies_after: Option<usize>,
        body: impl FnOnce(&mut Model, &mut Plan) -> Result<T>,
    ) -> Result<T> {
        assert!(self.is_alive(pid), "process {pid} is dead");
        if let Some(holder) = self.dead_holder.take() {
            self.repair(pid, holder);
        }
        let mut plan = Plan::new(self.state.clone(), self.now);
        let probes = self.probe(plan.state());
        super::sweep(&mut plan, &probes, 0, pid, &self.processes);
        let outcome = body(self, &mut plan);
        super::lead(&mut plan);
        let (after, steps) = plan.into_parts();
        self.apply(steps, dies_after);
        if dies_after.is_some() {
            self.kill(pid);
            self.dead_holder = Some((pid, op));
        } else {
            debug_assert_eq!(self.state, after, "the steps lead to the plan's state");
        }
        outcome
    }

    fn repair(&mut self, pid: u32, (holder_pid, holder_op): (u32, LockOp)) {
        // Slot mutexes left behind by a half-done registration.
        let stale: Vec<u32> = self
            .mutexes
            .iter()
            .filter(|&(&slot, &holder)| {
                !self.is_alive(holder) && !self.state.slots[slot as usize].is(WorkerState::Running)
            })
            .map(|(&slot, _)| slot)
            .collect();
        for slot in stale {
            self.mutexes.remove(&slot);
        }
        let mut plan = Plan::new(self.state.clone(), self.now);
        let probes = self.probe(plan.state());
        let last = self.journal.last().copied();
        super::repair(
            &mut plan,
            last.as_ref(),
            (holder_pid, holder_op),
            &probes,
            pid,
            &self.processes,
        );
        self.apply(plan.into_parts().1, None);
    }

    /// `pid` registers a generation, as a master's `init_by_lua` does.
    ///
    /// # Errors
    ///
    /// As [`crate::Registry::register_generation`].
    pub fn register_generation(&mut self, pid: u32, config: &GenerationConfig) -> Result<u64> {
        let settings = config.settings();
        let caller = self.caller(pid);
        self.operation(pid, LockOp::RegisterGeneration, None, |m, plan| {
            super::register_generation(
                plan,
                settings,
                caller,
                std::path::Path::new("model"),
                &m.processes,
            )
        })
    }

    /// `pid` registers as worker `index` of `generation`.
    ///
    /// # Errors
    ///
    /// As [`crate::Registry::register_worker`].
    pub fn register_worker(&mut self, pid: u32, generation: u64, index: u32) -> Result<WorkerId> {
        self.register(pid, generation, index, None)
    }

    /// `pid` registers as worker `index` of `generation`, and is killed holding the
    /// lock once `steps` steps (after its own sweep's) are written.
    ///
    /// # Errors
    ///
    /// As [`crate::Registry::register_worker`].
    pub fn register_worker_dies_after(
        &mut self,
        pid: u32,
        generation: u64,
        index: u32,
        steps: usize,
    ) -> Result<WorkerId> {
        self.register(pid, generation, index, Some(steps))
    }

    fn register(
        &mut self,
        pid: u32,
        generation: u64,
        index: u32,
        dies_after: Option<usize>,
    ) -> Result<WorkerId> {
        let caller = self.caller(pid);
        self.operation(pid, LockOp::RegisterWorker, dies_after, |m, plan| {
            let candidates = super::worker_slots(plan.state(), generation, index, pid)?;
            let slot = candidates
                .into_iter()
                .find(|slot| {
                    m.mutexes
                        .get(slot)
                        .map_or(true, |&holder| !m.is_alive(holder) || holder == pid)
                })
                .ok_or(Error::CapacityExhausted {
                    what: "worker",
                    capacity: plan.state().slot_capacity,
                })?;
            m.mutexes.insert(slot, pid);
            let id = super::register_worker(plan, generation, index, slot, caller, &m.processes)?;
            m.workers.insert(pid, (slot, id));
            Ok(id)
        })
    }

    /// The worker `pid` exits (graceful or fast).
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] for a process that is not a registered worker, and
    /// as [`crate::Registry::exit_worker`].
    pub fn exit_worker(&mut self, pid: u32, graceful: bool) -> Result<()> {
        self.exit(pid, graceful, None)
    }

    /// The worker `pid` exits, but is killed holding the lock once `steps` steps of
    /// its exit (after its own sweep's) are written.
    ///
    /// # Errors
    ///
    /// As [`Model::exit_worker`].
    pub fn exit_worker_dies_after(&mut self, pid: u32, graceful: bool, steps: usize) -> Result<()> {
        self.exit(pid, graceful, Some(steps))
    }

    fn exit(&mut self, pid: u32, graceful: bool, dies_after: Option<usize>) -> Result<()> {
        let (slot, id) = *self
            .workers
            .get(&pid)
            .ok_or_else(|| Error::NotRegistered(pid.to_string()))?;
        self.operation(pid, LockOp::ExitWorker, dies_after, |m, plan| {
            super::may_exit(plan.state(), slot, id)?;
            m.mutexes.remove(&slot);
            m.workers.remove(&pid);
            super::exit_worker(plan, slot, id, graceful, &m.processes)
        })
    }

    /// The worker `pid` begins its graceful exit (its process goes on).
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] for a process that is not a registered worker.
    pub fn resign(&mut self, pid: u32) -> Result<()> {
        let (slot, id) = *self
            .workers
            .get(&pid)
            .ok_or_else(|| Error::NotRegistered(pid.to_string()))?;
        self.operation(pid, LockOp::ExitWorker, None, |_, plan| {
            super::resign(plan, slot, id)
        })
    }

    /// The leader's pid (`None`: no leader) and the term, as the registry's header
    /// holds them.
    pub fn leader(&self) -> (Option<u32>, u64) {
        let node = self.state.node;
        (
            node.leader.slot().map(|_| node.leader_pid),
            node.leader.term(),
        )
    }

    /// `pid` closes the configuration of `generation` (the end of a Lua VM).
    pub fn configuration_closed(&mut self, pid: u32, generation: u64) {
        let _ = self.operation(pid, LockOp::RegisterGeneration, None, |_, plan| {
            super::configuration_closed(plan, generation, pid);
            Ok(())
        });
    }

    /// `pid` sweeps.
    pub fn sweep(&mut self, pid: u32) {
        let _ = self.operation(pid, LockOp::Sweep, None, |_, _| Ok(()));
    }

    /// `pid` sweeps, and is killed holding the lock once `steps` steps are written.
    pub fn sweep_dies_after(&mut self, pid: u32, steps: usize) {
        let _ = self.operation(pid, LockOp::Sweep, Some(steps), |_, _| Ok(()));
    }
}
