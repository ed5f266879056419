//! The rules over thousands of random node histories, with no file, no process and
//! no clock: an nginx-like node (a master, its workers, reloads, binary upgrades,
//! failed reloads, stops, `kill -9` anywhere, even inside the lock, hangs) drives
//! the [`Model`], and every history must keep the counts equal to the processes
//! alive, report each worker's end and each generation's end exactly once, and keep
//! the tables bounded. Every state change is also checked against the transition
//! tables (`Plan` asserts them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::model::Model;
use crate::event::{Detail, Event};
use crate::lifecycle::{EventKind, ExitReason, GenerationState, RunState, StartKind};
use crate::region::Capacities;
use crate::registry::GenerationConfig;
use crate::Error;

const CAPACITIES: Capacities = Capacities {
    generations: 32,
    workers: 128,
    events: 65536,
};

/// A process that only sweeps, as a CLI-less observer would through a worker's tick.
const OBSERVER: u32 = 2;

/// A worker killed holding the registry lock: which one (an index into the workers
/// concerned), and after how many writes of its operation.
#[derive(Debug, Clone, Copy)]
struct Death {
    pick: usize,
    steps: usize,
}

#[derive(Debug, Clone)]
enum Op {
    /// A start; one of the workers may be killed in the middle of its registration.
    Start {
        workers: u32,
        death: Option<Death>,
    },
    /// A reload; one of the old workers may be killed in the middle of its exit.
    Reload {
        workers: u32,
        death: Option<Death>,
    },
    FailedReload,
    /// A binary upgrade; one of the new workers may be killed in the middle of its
    /// registration.
    Upgrade {
        workers: u32,
        death: Option<Death>,
    },
    /// A stop; one of the workers may be killed in the middle of its exit.
    Stop {
        graceful: bool,
        death: Option<Death>,
    },
    Kill {
        pick: usize,
        respawn: bool,
    },
    /// A worker killed in the middle of its tick's sweep, which may have found
    /// another dead worker.
    KillHolding {
        death: Death,
        found_dead: bool,
    },
    KillMaster,
    Hang {
        pick: usize,
    },
    Tick,
}

fn death() -> impl Strategy<Value = Death> {
    (any::<usize>(), 0..10usize).prop_map(|(pick, steps)| Death { pick, steps })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1..4u32, proptest::option::of(death()))
            .prop_map(|(workers, death)| Op::Start { workers, death }),
        3 => (1..4u32, proptest::option::of(death()))
            .prop_map(|(workers, death)| Op::Reload { workers, death }),
        1 => Just(Op::FailedReload),
        1 => (1..4u32, proptest::option::of(death()))
            .prop_map(|(workers, death)| Op::Upgrade { workers, death }),
        1 => (any::<bool>(), proptest::option::of(death()))
            .prop_map(|(graceful, death)| Op::Stop { graceful, death }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, respawn)| Op::Kill { pick, respawn }),
        2 => (death(), any::<bool>())
            .prop_map(|(death, found_dead)| Op::KillHolding { death, found_dead }),
        1 => Just(Op::KillMaster),
        1 => any::<usize>().prop_map(|pick| Op::Hang { pick }),
        2 => Just(Op::Tick),
    ]
}

/// An nginx-like node over the model.
struct Node {
    model: Model,
    next_pid: u32,
    /// The live master and the generation it serves.
    master: Option<(u32, u64)>,
    /// Live registered worker processes: generation, index, parent.
    workers: BTreeMap<u32, (u64, u32, u32)>,
    /// Workers that stopped beating.
    hung: BTreeSet<u32>,
}

fn ok<T>(result: crate::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Every generation's settings: a crash-loop rule that two kills of one index within
/// a few operations trip, and that a hang's or a tick's wait ends.
fn config() -> GenerationConfig {
    GenerationConfig {
        crash_loop_intensity: 1,
        crash_loop_period: Duration::from_secs(5),
        ..GenerationConfig::default()
    }
}

impl Node {
    fn new() -> Node {
        let mut model = Model::new(CAPACITIES);
        model.spawn(OBSERVER, 1);
        Node {
            model,
            next_pid: 100,
            master: None,
            workers: BTreeMap::new(),
            hung: BTreeSet::new(),
        }
    }

    fn spawn(&mut self, parent: u32) -> u32 {
        self.next_pid += 1;
        self.model.spawn(self.next_pid, parent);
        self.next_pid
    }

    /// The last event but for a leader's election, which ends any operation.
    fn last_event(&self) -> &Event {
        self.model
            .events()
            .iter()
            .rev()
            .find(|e| e.kind() != EventKind::LeaderElected)
            .expect("an event")
    }

    /// `master` starts `workers` workers of `generation`; `death` kills one of them
    /// in the middle of its registration, holding the lock, and the master respawns
    /// it, as nginx does.
    fn start_workers(&mut self, master: u32, generation: u64, workers: u32, death: Option<Death>) {
        let victim = death.map(|d| (d.pick % workers as usize) as u32);
        for index in 0..workers {
            if let (Some(d), Some(v)) = (death, victim) {
                if v == index {
                    let pid = self.spawn(master);
                    let _ = self
                        .model
                        .register_worker_dies_after(pid, generation, index, d.steps);
                }
            }
            let pid = self.spawn(master);
            match self.model.register_worker(pid, generation, index) {
                Ok(_) => {
                    self.workers.insert(pid, (generation, index, master));
                }
                Err(Error::CapacityExhausted { .. }) => self.model.kill(pid),
                Err(e) => panic!("worker registration: {e}"),
            }
        }
    }

    /// Registers a generation of `master`; `None` when the table is full.
    fn register(&mut self, master: u32, expected: StartKind) -> Option<u64> {
        match self.model.register_generation(master, &config()) {
            Ok(id) => {
                let kind = match self.last_event().detail {
                    Detail::MasterStart { kind, .. } => kind,
                    other => panic!("expected master_start, got {other:?}"),
                };
                match expected {
                    StartKind::Start | StartKind::Restart => {
                        assert!(matches!(kind, StartKind::Start | StartKind::Restart))
                    }
                    _ => assert_eq!(kind, expected),
                }
                Some(id)
            }
            Err(Error::CapacityExhausted { .. }) => None,
            Err(e) => panic!("generation registration: {e}"),
        }
    }

    /// The workers of generations older than `newest` (all, with `None`) whose
    /// parent is `master` exit, as nginx's old workers do after a reload or an
    /// upgrade's WINCH, or all of them at a stop; `death` kills one of them in the
    /// middle of its exit, holding the lock.
    fn exit_all(
        &mut self,
        master: u32,
        newest: Option<u64>,
        graceful: bool,
        reason: ExitReason,
        death: Option<Death>,
    ) {
        let leaving: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, &(g, _, parent))| newest.map_or(true, |n| g < n) && parent == master)
            .map(|(&pid, _)| pid)
            .collect();
        let dying = death.and_then(|d| Some((*leaving.get(d.pick % leaving.len().max(1))?, d)));
        if graceful {
            // nginx runs their pending timers early, where they resign.
            for &pid in &leaving {
                ok(self.model.resign(pid));
            }
        }
        for pid in leaving {
            self.workers.remove(&pid);
            self.hung.remove(&pid);
            match dying {
                Some((victim, d)) if victim == pid => {
                    ok(self.model.exit_worker_dies_after(pid, graceful, d.steps));
                }
                _ => {
                    ok(self.model.exit_worker(pid, graceful));
                    match self.last_exit_of(pid) {
                        Some(r) => assert_eq!(r, reason, "worker {pid}'s exit"),
                        None => panic!("no worker_exit for {pid}"),
                    }
                }
            }
        }
    }

    fn last_exit_of(&self, pid: u32) -> Option<ExitReason> {
        self.model
            .events()
            .iter()
            .rev()
            .find_map(|e| match e.detail {
                Detail::WorkerExit { worker, reason } if worker.pid == pid => Some(reason),
                _ => None,
            })
    }

    fn pick(&self, pick: usize) -> Option<u32> {
        (!self.workers.is_empty())
            .then(|| *self.workers.keys().nth(pick % self.workers.len()).unwrap())
    }

    fn apply(&mut self, op: &Op) {
        self.model.advance(Duration::from_millis(100));
        match *op {
            Op::Start { workers, death } => {
                if self.master.is_some() {
                    return;
                }
                let master = self.spawn(1);
                if let Some(g) = self.register(master, StartKind::Start) {
                    self.start_workers(master, g, workers, death);
                    self.master = Some((master, g));
                } else {
                    self.model.kill(master);
                }
            }
            Op::Reload { workers, death } => {
                let Some((master, old)) = self.master else {
                    return;
                };
                let Some(g) = self.register(master, StartKind::Reload) else {
                    return;
                };
                self.model.configuration_closed(master, old);
                self.start_workers(master, g, workers, None);
                self.master = Some((master, g));
                self.exit_all(master, Some(g), true, ExitReason::Reload, death);
                self.model.sweep(OBSERVER);
            }
            Op::FailedReload => {
                let Some((master, _)) = self.master else {
                    return;
                };
                let Some(g) = self.register(master, StartKind::Reload) else {
                    return;
                };
                self.model.configuration_closed(master, g);
                assert!(
                    matches!(
                        self.last_event().detail,
                        Detail::GenerationAbort {
                            cause: crate::AbortCause::Failed
                        }
                    ),
                    "a failed reload is aborted at once"
                );
            }
            Op::Upgrade { workers, death } => {
                let Some((old_master, old)) = self.master else {
                    return;
                };
                let master = self.spawn(old_master);
                let Some(g) = self.register(master, StartKind::Upgrade) else {
                    self.model.kill(master);
                    return;
                };
                self.start_workers(master, g, workers, death);
                self.master = Some((master, g));
                self.exit_all(old_master, Some(g), true, ExitReason::Upgrade, None);
                self.model.configuration_closed(old_master, old);
                self.model.kill(old_master);
                self.model.sweep(OBSERVER);
            }
            Op::Stop { graceful, death } => {
                let Some((master, g)) = self.master.take() else {
                    return;
                };
                let reason = if graceful {
                    ExitReason::Stop
                } else {
                    ExitReason::FastStop
                };
                self.exit_all(master, None, graceful, reason, death);
                self.model.configuration_closed(master, g);
                self.model.kill(master);
                self.model.sweep(OBSERVER);
            }
            Op::Kill { pick, respawn } => {
                let Some(pid) = self.pick(pick) else {
                    return;
                };
                let (g, index, parent) = self.workers.remove(&pid).unwrap();
                self.hung.remove(&pid);
                self.model.kill(pid);
                // nginx respawns the workers of the configuration it serves.
                if respawn && self.master == Some((parent, g)) {
                    let new = self.spawn(parent);
                    match self.model.register_worker(new, g, index) {
                        Ok(_) => {
                            self.workers.insert(new, (g, index, parent));
                            assert!(matches!(
                                self.last_event().detail,
                                Detail::WorkerStart { replaces: Some(dead), .. } if dead.pid == pid
                            ));
                        }
                        Err(Error::CapacityExhausted { .. }) => self.model.kill(new),
                        Err(e) => panic!("respawn: {e}"),
                    }
                } else {
                    self.model.sweep(OBSERVER);
                }
            }
            Op::KillHolding { death, found_dead } => {
                let Some(pid) = self.pick(death.pick) else {
                    return;
                };
                if found_dead {
                    if let Some(other) = self.pick(death.pick + 1).filter(|&o| o != pid) {
                        self.workers.remove(&other);
                        self.hung.remove(&other);
                        self.model.kill(other);
                    }
                }
                self.workers.remove(&pid);
                self.hung.remove(&pid);
                self.model.sweep_dies_after(pid, death.steps);
                self.model.sweep(OBSERVER);
            }
            Op::KillMaster => {
                let Some((master, _)) = self.master.take() else {
                    return;
                };
                self.model.kill(master);
                self.model.sweep(OBSERVER);
            }
            Op::Hang { pick } => {
                let Some(pid) = self.pick(pick) else {
                    return;
                };
                self.hung.insert(pid);
                self.model.advance(Duration::from_secs(16));
                self.beat();
                self.model.sweep(OBSERVER);
            }
            Op::Tick => {
                self.hung.clear();
                self.model.advance(Duration::from_secs(1));
                self.beat();
                self.model.sweep(OBSERVER);
            }
        }
    }

    fn beat(&mut self) {
        for &pid in self.workers.keys() {
            if !self.hung.contains(&pid) {
                self.model.heartbeat(pid);
            }
        }
    }

    /// What must hold after every step.
    fn check(&self) {
        let generations = self.model.generations();
        // Counts equal the processes alive.
        for &(id, _, _) in &generations {
            let alive = self.workers.values().filter(|w| w.0 == id).count() as u32;
            assert_eq!(
                self.model.live(id),
                alive,
                "live workers of generation {id}"
            );
        }
        for w in self.workers.values() {
            assert!(
                generations.iter().any(|g| g.0 == w.0),
                "generation {} of a live worker is tracked",
                w.0
            );
        }
        // Bounded: a record stays only while it has a process, is the newest
        // committed, or is loading; a tombstone only while its generation stays.
        let newest = generations.iter().rev().find(|g| g.2).map_or(0, |g| g.0);
        let slots = self.model.slots();
        for &(id, state, _) in &generations {
            let present = slots.iter().any(|(w, s)| {
                w.generation == id
                    && matches!(s, crate::WorkerState::Running | crate::WorkerState::Exiting)
            });
            assert!(
                present || id == newest || state == Some(GenerationState::Starting),
                "generation {id} ({state:?}) should have been retired"
            );
        }
        for (w, _) in slots.iter().filter(|(_, s)| *s == crate::WorkerState::Dead) {
            assert!(generations.iter().any(|g| g.0 == w.generation));
        }
        // Each worker's end and each generation's end at most once.
        let mut ends: BTreeMap<u32, u32> = BTreeMap::new();
        let mut generation_ends: BTreeMap<u64, u32> = BTreeMap::new();
        for e in self.model.events() {
            match e.detail {
                Detail::WorkerExit { worker, .. } | Detail::WorkerCrash { worker, .. } => {
                    *ends.entry(worker.pid).or_default() += 1;
                    assert!(
                        !self.workers.contains_key(&worker.pid),
                        "a live worker {worker} reported gone: {e}"
                    );
                }
                Detail::MasterExit { .. } | Detail::GenerationAbort { .. } => {
                    *generation_ends.entry(e.generation).or_default() += 1;
                }
                _ => {}
            }
        }
        assert!(
            ends.values().all(|&n| n == 1),
            "a worker ended twice: {ends:?}"
        );
        // At most one leader, a live worker; one whenever a live worker may lead.
        let (leader, term) = self.model.leader();
        if let Some(pid) = leader {
            assert!(
                self.workers.contains_key(&pid),
                "leader {pid} is not a live worker"
            );
        } else {
            assert!(
                self.workers.keys().all(|pid| self.hung.contains(pid)),
                "no leader among {:?} (hung: {:?})",
                self.workers.keys(),
                self.hung
            );
        }
        // Every change journalled: terms one by one, each naming the leader before.
        let mut last = (0, 0);
        for e in self.model.events() {
            if let Detail::LeaderElected {
                leader,
                previous_pid,
                term,
                ..
            } = e.detail
            {
                assert_eq!(term, last.0 + 1, "{e}");
                assert_eq!(previous_pid, last.1, "{e}");
                last = (term, leader.map_or(0, |w| w.pid));
            }
        }
        assert_eq!(last, (term, leader.unwrap_or(0)));
        // Per index, a crash loop begins after more crashes than the intensity
        // allows, and loops and their ends alternate.
        let mut crashes: BTreeMap<u32, u32> = BTreeMap::new();
        let mut looping: BTreeMap<u32, bool> = BTreeMap::new();
        for e in self.model.events() {
            match e.detail {
                Detail::WorkerCrash { worker, .. } => {
                    *crashes.entry(worker.index).or_default() += 1
                }
                Detail::WorkerCrashLoop {
                    worker, crashes: n, ..
                } => {
                    let seen = crashes.get(&worker.index).copied().unwrap_or(0);
                    assert!(
                        n > 1 && n <= seen,
                        "loop of index {} after {seen} crashes: {e}",
                        worker.index
                    );
                    let was = looping.insert(worker.index, true).unwrap_or(false);
                    assert!(!was, "index {} entered a loop twice: {e}", worker.index);
                }
                Detail::WorkerCrashLoopEnd { worker, .. } => {
                    let was = looping.insert(worker.index, false).unwrap_or(false);
                    assert!(was, "index {} left a loop it was not in: {e}", worker.index);
                }
                _ => {}
            }
        }
        assert!(
            generation_ends.values().all(|&n| n == 1),
            "a generation ended twice: {generation_ends:?}"
        );
    }

    /// Everything stops; then every worker and every generation has ended exactly
    /// once, and so has the run.
    fn finish(&mut self) {
        self.apply(&Op::Stop {
            graceful: true,
            death: None,
        });
        let orphans: Vec<u32> = self.workers.keys().copied().collect();
        for pid in orphans {
            self.model.kill(pid);
            self.workers.remove(&pid);
        }
        self.model.sweep(OBSERVER);
        self.check();
        let events = self.model.events();
        let registered: BTreeSet<u32> = events
            .iter()
            .filter_map(|e| match e.detail {
                Detail::WorkerStart { worker, .. } => Some(worker.pid),
                _ => None,
            })
            .collect();
        for pid in registered {
            let ends = events
                .iter()
                .filter(|e| {
                    matches!(e.kind(), EventKind::WorkerExit | EventKind::WorkerCrash)
                        && e.worker().map(|w| w.pid) == Some(pid)
                })
                .count();
            assert_eq!(ends, 1, "worker {pid} ended {ends} times");
        }
        for e in events.iter().filter(|e| e.kind() == EventKind::MasterStart) {
            let ends = events
                .iter()
                .filter(|x| {
                    x.generation == e.generation
                        && matches!(x.kind(), EventKind::MasterExit | EventKind::GenerationAbort)
                })
                .count();
            assert_eq!(ends, 1, "generation {} ended {ends} times", e.generation);
        }
        assert!(
            matches!(
                self.model.run_state(),
                Some(RunState::Ended(_) | RunState::Never)
            ),
            "the run ended: {:?}",
            self.model.run_state()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_history_keeps_counts_exact_and_ends_reported_once(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut node = Node::new();
        for op in &ops {
            node.apply(op);
            node.check();
        }
        node.finish();
    }
}

#[test]
fn a_death_inside_the_lock_after_any_write_is_reported_once() {
    for steps in 0..10 {
        for pick in 0..3 {
            let death = Some(Death { pick, steps });
            for op in [
                Op::Upgrade { workers: 2, death },
                Op::Reload { workers: 2, death },
                Op::Stop {
                    graceful: true,
                    death,
                },
                Op::Stop {
                    graceful: false,
                    death,
                },
                Op::KillHolding {
                    death: Death { pick, steps },
                    found_dead: true,
                },
            ] {
                let mut node = Node::new();
                node.apply(&Op::Start {
                    workers: 3,
                    death: None,
                });
                node.apply(&op);
                node.check();
                node.finish();
            }
        }
    }
}

/// Index 0 crashes three times; the sweeper dies after each possible write of the
/// sweep that finds the third crash. Whatever the death, the loop is reported once,
/// counting each crash once, and its end once, after a quiet period.
#[test]
fn a_crash_loop_is_reported_once_whatever_the_sweeper_s_death() {
    for steps in 0..8 {
        let mut m = Model::new(CAPACITIES);
        m.spawn(OBSERVER, 1);
        m.spawn(10, 1);
        let rule = GenerationConfig {
            crash_loop_intensity: 2,
            crash_loop_period: Duration::from_secs(10),
            ..GenerationConfig::default()
        };
        let g = ok(m.register_generation(10, &rule));
        let mut pid = 100;
        for crash in 0..3 {
            pid += 1;
            m.spawn(pid, 10);
            ok(m.register_worker(pid, g, 0));
            m.advance(Duration::from_secs(1));
            m.kill(pid);
            if crash == 2 {
                m.spawn(50, 10);
                m.sweep_dies_after(50, steps);
            }
            m.sweep(OBSERVER);
        }
        let of =
            |m: &Model, kind: EventKind| m.events().iter().filter(|e| e.kind() == kind).count();
        assert_eq!(of(&m, EventKind::WorkerCrash), 3, "steps {steps}");
        assert_eq!(of(&m, EventKind::WorkerCrashLoop), 1, "steps {steps}");
        let looped = m.events().iter().find_map(|e| match e.detail {
            Detail::WorkerCrashLoop { crashes, .. } => Some(crashes),
            _ => None,
        });
        assert_eq!(looped, Some(3), "steps {steps}");
        m.advance(Duration::from_secs(9));
        m.sweep(OBSERVER);
        assert_eq!(of(&m, EventKind::WorkerCrashLoopEnd), 0, "steps {steps}");
        m.advance(Duration::from_secs(2));
        m.sweep(OBSERVER);
        assert_eq!(of(&m, EventKind::WorkerCrashLoopEnd), 1, "steps {steps}");
        m.sweep(OBSERVER);
        assert_eq!(of(&m, EventKind::WorkerCrashLoopEnd), 1, "steps {steps}");
    }
}

/// With an intensity of 0 the rule is off.
#[test]
fn an_intensity_of_zero_reports_no_loop() {
    let mut m = Model::new(CAPACITIES);
    m.spawn(10, 1);
    let off = GenerationConfig {
        crash_loop_intensity: 0,
        ..GenerationConfig::default()
    };
    let g = ok(m.register_generation(10, &off));
    for pid in 101..110 {
        m.spawn(pid, 10);
        ok(m.register_worker(pid, g, 0));
        m.kill(pid);
        m.sweep(10);
    }
    assert!(m
        .events()
        .iter()
        .all(|e| e.kind() != EventKind::WorkerCrashLoop));
}

/// A damaged file: a generation record in use whose state says free. A worker of it
/// announcing its exit changes no state the record does not have (found by fuzzing:
/// the node's stop ended it from `Free`).
#[test]
fn a_record_whose_state_is_damaged_is_not_ended() {
    use super::plan::{Now, Plan};
    use super::state::{Generation, Slot, State};
    use crate::event::WorkerId;
    use crate::lifecycle::WorkerState;

    let worker = WorkerId {
        generation: 1,
        pid: 10,
        index: 0,
    };
    let state = State {
        generations: vec![Generation {
            record: 0,
            id: 1,
            state: Some(GenerationState::Free),
            ..Generation::default()
        }],
        slots: vec![Slot {
            slot: 0,
            state: Some(WorkerState::Running),
            pid: worker.pid,
            generation: 1,
            ..Slot::default()
        }],
        slot_capacity: 1,
        ..State::default()
    };
    let mut plan = Plan::new(state, Now::default());
    ok(super::announce_exit(&mut plan, 0, worker));
    assert!(plan
        .state()
        .generations
        .iter()
        .all(|g| g.state == Some(GenerationState::Free)));
}

/// The leader's causes, one by one: the first worker leads (start); a reload leaves
/// it leading until it resigns (reload), then a new worker of the same index leads;
/// its respawn takes over a dead leader in its own registration (death); a hung
/// leader is replaced (hang); the last leader's exit leaves no leader (exit).
#[test]
fn leadership_moves_only_when_the_leader_cannot_lead() {
    use crate::lifecycle::LeaderCause;
    let last_cause = |m: &Model| {
        m.events().iter().rev().find_map(|e| match e.detail {
            Detail::LeaderElected { cause, .. } => Some(cause),
            _ => None,
        })
    };
    let mut m = Model::new(CAPACITIES);
    m.spawn(10, 1);
    let g1 = ok(m.register_generation(10, &GenerationConfig::default()));
    for (pid, index) in [(11, 0), (12, 1)] {
        m.spawn(pid, 10);
        ok(m.register_worker(pid, g1, index));
    }
    assert_eq!(m.leader(), (Some(11), 1));
    assert_eq!(last_cause(&m), Some(LeaderCause::Start));

    // A reload: the new workers start, the old leader leads on until it resigns.
    let g2 = ok(m.register_generation(10, &GenerationConfig::default()));
    m.configuration_closed(10, g1);
    for (pid, index) in [(21, 0), (22, 1)] {
        m.spawn(pid, 10);
        ok(m.register_worker(pid, g2, index));
    }
    ok(m.resign(12));
    assert_eq!(m.leader(), (Some(11), 1));
    ok(m.resign(11));
    assert_eq!(m.leader(), (Some(21), 2));
    assert_eq!(last_cause(&m), Some(LeaderCause::Reload));
    ok(m.exit_worker(11, true));
    ok(m.exit_worker(12, true));
    assert_eq!(m.leader(), (Some(21), 2));

    // kill -9 of the leader: its respawn leads from its registration.
    m.kill(21);
    m.spawn(23, 10);
    ok(m.register_worker(23, g2, 0));
    assert_eq!(m.leader(), (Some(23), 3));
    assert_eq!(last_cause(&m), Some(LeaderCause::Death));

    // The leader hangs: the other worker leads; the hung one does not come back.
    m.advance(Duration::from_secs(16));
    m.heartbeat(22);
    m.sweep(22);
    assert_eq!(m.leader(), (Some(22), 4));
    assert_eq!(last_cause(&m), Some(LeaderCause::Hang));
    m.heartbeat(23);
    m.sweep(23);
    assert_eq!(m.leader(), (Some(22), 4));

    // A fast stop: the leader's exit hands over to the last worker, whose exit
    // leaves none.
    ok(m.exit_worker(22, false));
    assert_eq!(m.leader(), (Some(23), 5));
    assert_eq!(last_cause(&m), Some(LeaderCause::Exit));
    ok(m.exit_worker(23, false));
    assert_eq!(m.leader(), (None, 6));
}

/// The leader killed holding the lock, after any write of its sweep: whoever
/// elects next says `death`, whether the crash is journalled by the repair or later.
#[test]
fn a_leader_killed_in_the_lock_is_replaced_for_its_death() {
    use crate::lifecycle::LeaderCause;
    for steps in 0..6 {
        let mut m = Model::new(CAPACITIES);
        m.spawn(10, 1);
        let g = ok(m.register_generation(10, &GenerationConfig::default()));
        for (pid, index) in [(11, 0), (12, 1)] {
            m.spawn(pid, 10);
            ok(m.register_worker(pid, g, index));
        }
        assert_eq!(m.leader().0, Some(11));
        m.kill(12);
        m.sweep_dies_after(11, steps);
        m.spawn(13, 10);
        ok(m.register_worker(13, g, 0));
        let last = m
            .events()
            .iter()
            .rev()
            .find_map(|e| match e.detail {
                Detail::LeaderElected { cause, leader, .. } => Some((cause, leader)),
                _ => None,
            })
            .unwrap();
        assert_eq!(last.0, LeaderCause::Death, "steps {steps}");
        assert_eq!(last.1.map(|w| w.pid), Some(13), "steps {steps}");
    }
}
