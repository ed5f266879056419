//! Storms against a real nginx: kill -9 at random moments, many of them inside
//! callbacks that hold the registry lock, and hundreds of reloads mixed with worker
//! count changes, kills and a binary upgrade. After each storm the registry must agree
//! with the processes that really run, and the journal with the callbacks.
//!
//! Sizes come from `WM_STORM_KILLS` (default 40) and `WM_STORM_RELOADS` (default 40);
//! `make stress` runs 300 and 500. Each run prints its seed; `WM_STORM_SEED` replays
//! the same choices.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::nginx::{serial, signal, start, Config, Nginx};
use common::STEP_TIMEOUT;
use worker_manager::{Detail, Event, EventKind, Observer, Snapshot, WorkerState};

fn count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v}: not a count"))
        })
        .unwrap_or(default)
}

/// xorshift64*: the storm's choices, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("WM_STORM_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("storm seed: WM_STORM_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }

    fn pause(&mut self, max_ms: u64) {
        std::thread::sleep(Duration::from_millis(self.below(max_ms + 1)));
    }
}

/// The registry's journal, read from outside as the CLI reads it, from its first
/// entry on. Every entry must be read exactly once and in order: an entry the ring
/// overwrote before it was read, or one skipped, fails the test.
struct Journal {
    observer: Observer,
    next: u64,
    events: Vec<Event>,
}

impl Journal {
    fn open(nginx: &Nginx) -> Journal {
        Journal {
            observer: Observer::open(nginx.registry()).expect("observe the registry"),
            next: 1,
            events: Vec::new(),
        }
    }

    fn catch_up(&mut self) {
        for e in self.observer.events_since(self.next) {
            assert_eq!(
                e.seq, self.next,
                "journal entry {} was never read",
                self.next
            );
            self.next += 1;
            self.events.push(e);
        }
    }

    /// Waits (on the journal's futex) until `done` holds of the snapshot and the
    /// events read so far.
    fn wait(&mut self, what: &str, done: impl Fn(&Snapshot, &[Event]) -> bool) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            self.catch_up();
            if done(&self.observer.snapshot(), &self.events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; registry: {:#?}",
                self.observer.snapshot()
            );
            self.observer
                .wait_for_event(self.next, Duration::from_millis(50));
        }
    }

    fn of(&self, kind: EventKind) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.kind() == kind)
    }

    /// The pids of the holders the lock was recovered from.
    fn recovered_from(&self) -> Vec<u32> {
        self.events
            .iter()
            .filter_map(|e| match e.detail {
                Detail::LockRecovered { holder_pid, .. } => Some(holder_pid),
                _ => None,
            })
            .collect()
    }
}

fn running(s: &Snapshot) -> BTreeSet<u32> {
    s.workers
        .iter()
        .filter(|w| w.state == WorkerState::Running)
        .map(|w| w.id.pid)
        .collect()
}

/// The registry at rest agrees with the processes: the running workers are exactly
/// the master's live children, no other slot is in use, the lock is free.
fn agrees(nginx: &Nginx, master: u32, workers: usize, s: &Snapshot) -> bool {
    let live: BTreeSet<u32> = nginx.workers(master).into_iter().collect();
    live.len() == workers && running(s) == live && s.workers.len() == workers && s.lock.is_none()
}

/// Checks the journal's own bookkeeping: a consistent reading whose per-kind totals
/// add up to its head, and totals equal to what the follower read.
fn check_journal(journal: &Journal) {
    let s = journal.observer.snapshot();
    assert!(s.consistent);
    let totals: u64 = s.events.iter().map(|t| t.total).sum();
    assert_eq!(totals, s.next_seq - 1);
    assert_eq!(s.next_seq, journal.next);
    for tally in &s.events {
        assert_eq!(
            tally.total,
            journal.of(tally.kind).count() as u64,
            "{:?}",
            tally.kind
        );
    }
}

/// Per worker index, crash loops and their ends alternate, each loop counting more
/// crashes than the default intensity (5) and no more than the index had; the
/// indexes the snapshot has looping are those whose last word was a loop. Returns
/// how many loops began.
fn check_crash_loops(journal: &Journal, s: &Snapshot) -> usize {
    let mut crashes: BTreeMap<u32, u32> = BTreeMap::new();
    let mut looping: BTreeMap<u32, bool> = BTreeMap::new();
    let mut loops = 0;
    for e in &journal.events {
        match e.detail {
            Detail::WorkerCrash { worker, .. } => *crashes.entry(worker.index).or_default() += 1,
            Detail::WorkerCrashLoop {
                worker, crashes: n, ..
            } => {
                let seen = crashes.get(&worker.index).copied().unwrap_or(0);
                assert!(n > 5 && n <= seen, "{e}: after {seen} crashes");
                assert!(
                    !looping.insert(worker.index, true).unwrap_or(false),
                    "{e}: twice"
                );
                loops += 1;
            }
            Detail::WorkerCrashLoopEnd { worker, .. } => {
                assert!(
                    looping.insert(worker.index, false).unwrap_or(false),
                    "{e}: not looping"
                );
            }
            _ => {}
        }
    }
    let expected: BTreeSet<u32> = looping
        .iter()
        .filter(|(_, &l)| l)
        .map(|(&i, _)| i)
        .collect();
    let shown: BTreeSet<u32> = s.crash_loops.iter().map(|l| l.index).collect();
    assert_eq!(shown, expected, "crash loops in the snapshot");
    loops
}

/// Every callback of a node-level event in the journal ran at least once, and at most
/// once unless flagged as a redelivery (its first process died before it returned);
/// returns how many ran as redeliveries.
fn check_deliveries(nginx: &Nginx, journal: &Journal) -> usize {
    let mut first: BTreeMap<u64, usize> = BTreeMap::new();
    let mut again: BTreeMap<u64, usize> = BTreeMap::new();
    let node_level = EventKind::ALL
        .iter()
        .filter(|k| k.is_node_level() && **k != EventKind::LockRecovered);
    for &kind in node_level {
        for e in nginx.named(kind) {
            let runs = if e.event().redelivered {
                &mut again
            } else {
                &mut first
            };
            *runs.entry(e.event().seq).or_default() += 1;
        }
    }
    let twice: Vec<_> = first.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "callbacks run twice unflagged: {twice:?}");
    let lost: Vec<&Event> = journal
        .events
        .iter()
        .filter(|e| e.kind().is_node_level() && e.kind() != EventKind::LockRecovered)
        .filter(|e| !first.contains_key(&e.seq) && !again.contains_key(&e.seq))
        .collect();
    assert!(lost.is_empty(), "callbacks never run: {lost:#?}");
    again.values().sum()
}

/// Lua run at the start of every callback: sleeps 0 to 30 ms, holding the lock,
/// so that kills often land inside a callback.
const SLEEP_IN_CALLBACK: &str = r#"
    if not WM_POLL then
        ffi.cdef("int poll(void *fds, unsigned long nfds, int timeout);")
        WM_POLL = true
        math.randomseed(ngx.worker.pid() or 0)
    end
    ffi.C.poll(nil, 0, math.random(0, 30))
"#;

#[test]
fn a_kill_storm_leaves_one_crash_per_kill_and_the_registry_exact() {
    let kills = count("WM_STORM_KILLS", 40);
    let workers = 4;
    let mut rng = Rng::new();
    let _serial = serial();
    let (nginx, master) = start(&Config {
        workers: workers as u32,
        in_callback: SLEEP_IN_CALLBACK.into(),
        ..Config::default()
    });
    let mut journal = Journal::open(&nginx);
    journal.wait("the first workers", |s, _| {
        agrees(&nginx, master, workers, s)
    });

    // Every victim, and those the registry had running when chosen: each of these
    // must be reported exactly once.
    let mut killed = BTreeSet::new();
    let mut registered = BTreeSet::new();
    let mut holders = 0;
    while (killed.len() as u64) < kills {
        let s = journal.observer.snapshot();
        let live: Vec<u32> = nginx
            .workers(master)
            .into_iter()
            .filter(|p| !killed.contains(p))
            .collect();
        let holder = s.lock.as_ref().map(|l| l.pid).filter(|p| live.contains(p));
        let victim = match holder {
            Some(pid) if rng.below(2) == 0 => {
                holders += 1;
                pid
            }
            _ => match rng.pick(&live) {
                Some(pid) => pid,
                None => {
                    rng.pause(5);
                    continue;
                }
            },
        };
        signal(victim, libc::SIGKILL);
        killed.insert(victim);
        if running(&s).contains(&victim) {
            registered.insert(victim);
        }
        journal.catch_up();
        rng.pause(60);
    }

    journal.wait("the storm to settle", |s, events| {
        let reported = events
            .iter()
            .filter(|e| e.kind() == EventKind::WorkerCrash)
            .count();
        reported >= registered.len() && agrees(&nginx, master, workers, s)
    });

    // Exactly one worker_crash per killed worker the registry knew, none for others.
    let crashes: Vec<(u32, bool, u32)> = journal
        .events
        .iter()
        .filter_map(|e| match e.detail {
            Detail::WorkerCrash {
                worker,
                held_lock,
                detected_by,
                ..
            } => Some((worker.pid, held_lock, detected_by)),
            _ => None,
        })
        .collect();
    let crashed: BTreeSet<u32> = crashes.iter().map(|c| c.0).collect();
    assert_eq!(crashed.len(), crashes.len(), "a crash reported twice");
    assert!(crashed.is_subset(&killed), "a crash of a live worker");
    assert!(
        registered.is_subset(&crashed),
        "kills never reported: {:?}",
        registered.difference(&crashed).collect::<Vec<_>>()
    );

    // The lock: recovered once from each holder that died with it, never stuck.
    let recovered = journal.recovered_from();
    let unique: BTreeSet<u32> = recovered.iter().copied().collect();
    assert_eq!(unique.len(), recovered.len(), "a lock recovered twice");
    assert!(unique.is_subset(&killed));
    let held: Vec<u32> = crashes.iter().filter(|c| c.1).map(|c| c.0).collect();
    assert!(held.iter().all(|p| unique.contains(p)));
    let s = journal.observer.snapshot();
    assert_eq!(s.stats.lock_recoveries, recovered.len() as u64);
    if holders >= 5 {
        assert!(
            !recovered.is_empty(),
            "{holders} holders killed, no recovery"
        );
    }

    let loops = check_crash_loops(&journal, &s);
    let redelivered = check_deliveries(&nginx, &journal);
    check_journal(&journal);
    nginx.wait_status(&format!("live={workers} "));
    eprintln!(
        "kill storm: {} kills, {} of registered workers, {} crashes ({} holding the \
         lock), {} lock recoveries, {} holders targeted, {loops} crash loops, \
         {redelivered} callbacks redelivered after their process died, none lost",
        killed.len(),
        registered.len(),
        crashes.len(),
        held.len(),
        recovered.len(),
        holders,
    );
    signal(master, libc::SIGQUIT);
    nginx.wait_gone(master);
}

/// The generations the journal saw register, and how each ended.
fn endings(journal: &Journal) -> BTreeMap<u64, Vec<EventKind>> {
    let mut out: BTreeMap<u64, Vec<EventKind>> = BTreeMap::new();
    for e in &journal.events {
        match e.kind() {
            EventKind::MasterStart => {
                out.entry(e.generation).or_default();
            }
            k @ (EventKind::MasterExit | EventKind::GenerationAbort) => {
                out.entry(e.generation).or_default().push(k);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn a_reload_storm_keeps_the_registry_bounded_and_ends_every_generation_once() {
    let reloads = count("WM_STORM_RELOADS", 40);
    let mut rng = Rng::new();
    let _serial = serial();
    let mut config = Config {
        workers: 2,
        daemon: true,
        ..Config::default()
    };
    let (mut nginx, mut master) = start(&config);
    let size = fs::metadata(nginx.registry()).unwrap().len();
    let mut journal = Journal::open(&nginx);
    journal.wait("the first workers", |s, _| agrees(&nginx, master, 2, s));

    let mut killed = BTreeSet::new();
    let mut generation = 1;
    for i in 0..reloads {
        if i == reloads / 2 {
            // A binary upgrade: the new master is a child of the old one, until the
            // old one is told to quit.
            signal(master, libc::SIGUSR2);
            let new = nginx.wait_for_pid(Some(master));
            nginx.adopt(new);
            generation += 1;
            journal.wait("the upgrade", |_, events| {
                events.iter().any(|e| e.generation == generation)
            });
            signal(master, libc::SIGQUIT);
            nginx.wait_gone(master);
            master = new;
        }
        if rng.below(4) == 0 {
            config.workers = 1 + rng.below(4) as u32;
            nginx.write_config(&config);
        }
        if rng.below(5) == 0 {
            if let Some(victim) = rng.pick(&nginx.workers(master)) {
                signal(victim, libc::SIGKILL);
                killed.insert(victim);
            }
        }
        signal(master, libc::SIGHUP);
        generation += 1;
        journal.wait("the reload's generation", |_, events| {
            events
                .iter()
                .any(|e| e.kind() == EventKind::MasterStart && e.generation == generation)
        });
        rng.pause(20);
    }

    let workers = config.workers as usize;
    journal.wait("the storm to settle", |s, _| {
        agrees(&nginx, master, workers, s)
            && s.generations
                .iter()
                .filter(|g| g.id != generation)
                .all(|g| g.exited.is_some())
    });
    nginx.wait_status(&format!("live={workers} "));

    // Bounded: same file, generation ids past the table's capacity, old ones retired.
    let s = journal.observer.snapshot();
    assert_eq!(fs::metadata(nginx.registry()).unwrap().len(), size);
    assert!(s.generations.len() <= s.capacities.generations as usize);
    assert_eq!(s.generations.iter().map(|g| g.id).max(), Some(generation));

    // Kills of workers: a crash each at most, none of a live worker.
    let crashed: Vec<u32> = journal
        .of(EventKind::WorkerCrash)
        .filter_map(|e| e.worker())
        .map(|w| w.pid)
        .collect();
    let unique: BTreeSet<u32> = crashed.iter().copied().collect();
    assert_eq!(unique.len(), crashed.len());
    assert!(unique.is_subset(&killed));

    // A graceful stop ends the last generation; then every generation registered has
    // ended exactly once, by master_exit, or by generation_abort if no worker of it
    // ever registered.
    signal(master, libc::SIGQUIT);
    nginx.wait_gone(master);
    journal.wait("the last master_exit", |_, events| {
        events
            .iter()
            .any(|e| e.kind() == EventKind::MasterExit && e.generation == generation)
    });
    let ends = endings(&journal);
    assert_eq!(ends.len() as u64, generation);
    let wrong: Vec<_> = ends.iter().filter(|(_, k)| k.len() != 1).collect();
    assert!(
        wrong.is_empty(),
        "generations not ended exactly once: {wrong:?}"
    );
    let aborted = ends
        .values()
        .filter(|k| k[0] == EventKind::GenerationAbort)
        .count();

    let redelivered = check_deliveries(&nginx, &journal);
    check_journal(&journal);
    eprintln!(
        "reload storm: {reloads} reloads and an upgrade, {generation} generations \
         ({aborted} aborted), {} kills, {} crashes, {} journal entries (ring of {}), \
         registry {size} bytes throughout, {redelivered} callbacks redelivered",
        killed.len(),
        crashed.len(),
        journal.next - 1,
        s.capacities.events
    );
}
