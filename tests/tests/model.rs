//! Property test over real processes: any sequence of reloads, worker starts,
//! graceful and fast exits, kill -9 and respawns keeps every count equal to the
//! processes really alive, and reports exactly one crash per death. It is also the
//! differential check of the rules' model (`worker_manager::model`, tested alone
//! over thousands of histories in the core): the same sequence run through the
//! model gives the same journal as through the registry and real processes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use common::{Probe, Scratch};
use proptest::prelude::*;
use worker_manager::model::Model;
use worker_manager::{Capacities, Detail, Event, EventKind, GenerationConfig, Options, Registry};

#[derive(Debug, Clone)]
enum Op {
    Reload,
    Start,
    Exit { pick: usize, graceful: bool },
    Kill { pick: usize },
    Respawn { pick: usize },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => Just(Op::Reload),
        4 => Just(Op::Start),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, graceful)| Op::Exit { pick, graceful }),
        2 => any::<usize>().prop_map(|pick| Op::Kill { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Respawn { pick }),
        1 => Just(Op::Sweep),
    ]
}

struct Live {
    probe: Probe,
    generation: u64,
    index: u32,
}

struct World {
    scratch: Scratch,
    registry: Registry,
    /// The same node in memory: this process as the master, the probes' pids as
    /// its workers, a clock that follows the real one.
    model: Model,
    me: u32,
    clock: Instant,
    generations: Vec<u64>,
    next_index: BTreeMap<u64, u32>,
    live: Vec<Live>,
    killed: Vec<u32>,
}

impl World {
    fn new() -> World {
        let scratch = Scratch::new();
        let capacities = Capacities {
            generations: 64,
            workers: 256,
            events: 4096,
        };
        let options = Options {
            capacities,
            ..Options::default()
        };
        let registry = Registry::open(scratch.registry(), &options).unwrap();
        let me = std::process::id();
        let mut model = Model::new(capacities);
        // SAFETY: getppid has no preconditions.
        model.spawn(me, unsafe { libc::getppid() } as u32);
        World {
            scratch,
            registry,
            model,
            me,
            clock: Instant::now(),
            generations: Vec::new(),
            next_index: BTreeMap::new(),
            live: Vec::new(),
            killed: Vec::new(),
        }
    }

    fn live_in(&self, generation: u64) -> u32 {
        self.live
            .iter()
            .filter(|l| l.generation == generation)
            .count() as u32
    }

    /// Moves the model's clock as far as the real one moved.
    fn tick(&mut self) {
        let now = Instant::now();
        self.model.advance(now - self.clock);
        self.clock = now;
    }

    fn start(&mut self, generation: u64, index: u32) -> Probe {
        let mut probe = Probe::spawn(&self.scratch.registry());
        self.model.spawn(probe.pid, self.me);
        self.tick();
        probe.worker(generation, index);
        let modelled = self.model.register_worker(probe.pid, generation, index);
        assert!(modelled.is_ok(), "the model registers it: {modelled:?}");
        let start = probe.one(EventKind::WorkerStart);
        assert_eq!(
            start.counts.mine,
            self.live_in(generation) + 1,
            "n_mine of {start}"
        );
        probe
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Reload => {
                self.tick();
                let g = self
                    .registry
                    .register_generation(&Default::default(), |_| {})
                    .unwrap();
                let modelled = self
                    .model
                    .register_generation(self.me, &GenerationConfig::default());
                assert_eq!(modelled.ok(), Some(g));
                self.generations.push(g);
            }
            Op::Start => {
                let Some(&g) = self.generations.last() else {
                    return;
                };
                let index = self.next_index.entry(g).or_default();
                let i = *index;
                *index += 1;
                let probe = self.start(g, i);
                self.live.push(Live {
                    probe,
                    generation: g,
                    index: i,
                });
            }
            Op::Exit { pick, graceful } => {
                if self.live.is_empty() {
                    return;
                }
                let mut l = self.live.remove(pick % self.live.len());
                self.tick();
                l.probe.ok(if graceful {
                    "exit graceful"
                } else {
                    "exit fast"
                });
                let modelled = self.model.exit_worker(l.probe.pid, graceful);
                assert!(modelled.is_ok(), "the model exits it: {modelled:?}");
            }
            Op::Kill { pick } => {
                if self.live.is_empty() {
                    return;
                }
                let mut l = self.live.remove(pick % self.live.len());
                self.killed.push(l.probe.pid);
                l.probe.kill9();
                self.model.kill(l.probe.pid);
            }
            Op::Respawn { pick } => {
                let Some(&newest) = self.generations.last() else {
                    return;
                };
                let candidates: Vec<usize> = (0..self.live.len())
                    .filter(|&i| self.live[i].generation == newest)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let mut l = self.live.remove(candidates[pick % candidates.len()]);
                self.killed.push(l.probe.pid);
                l.probe.kill9();
                self.model.kill(l.probe.pid);
                let probe = self.start(newest, l.index);
                let start = probe.one(EventKind::WorkerStart);
                assert!(
                    matches!(
                        start.detail,
                        Detail::WorkerStart { replaces: Some(dead), .. } if dead.pid == l.probe.pid
                    ),
                    "a respawn of {}: {start}",
                    l.probe.pid
                );
                self.live.push(Live {
                    probe,
                    generation: newest,
                    index: l.index,
                });
            }
            Op::Sweep => self.sweep(),
        }
    }

    fn sweep(&mut self) {
        self.tick();
        self.registry.sweep(|_| {}).unwrap();
        self.model.sweep(self.me);
    }

    fn check(&mut self) {
        self.sweep();
        // The journal, but for the wall-clock times.
        let timeless = |events: &[Event]| -> Vec<_> {
            events
                .iter()
                .map(|e| (e.seq, e.generation, e.counts, e.detail))
                .collect()
        };
        assert_eq!(
            timeless(&self.registry.events_since(0)),
            timeless(self.model.events()),
            "the registry over real processes and the model disagree"
        );
        let snapshot = self.registry.snapshot().unwrap();
        let real: BTreeSet<u32> = self.live.iter().map(|l| l.probe.pid).collect();
        let seen: BTreeSet<u32> = snapshot.live_workers().map(|w| w.id.pid).collect();
        assert_eq!(seen, real, "live workers in the registry vs really alive");
        for g in &snapshot.generations {
            assert_eq!(g.live_workers, self.live_in(g.id), "generation {}", g.id);
        }
        let crashes: Vec<u32> = self
            .registry
            .events_since(0)
            .iter()
            .filter(|e| e.kind() == EventKind::WorkerCrash)
            .map(|e| e.worker().unwrap().pid)
            .collect();
        let mut killed = self.killed.clone();
        let mut reported = crashes.clone();
        killed.sort_unstable();
        reported.sort_unstable();
        assert_eq!(reported, killed, "exactly one crash event per kill");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn counts_follow_the_real_processes(ops in proptest::collection::vec(op(), 1..14)) {
        let mut world = World::new();
        world.apply(&Op::Reload);
        for op in &ops {
            world.apply(op);
            world.check();
        }
    }
}
