//! Reading a live registry from outside, as the CLI does: read-only, lock-free,
//! consistent while real processes start and exit, and woken by journal entries.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Probe, Scratch, STEP_TIMEOUT};
use worker_manager::{Identity, Observer, Snapshot, WorkerState};

/// The invariants a consistent copy must satisfy, whatever moment it was taken at.
fn check_consistent(s: &Snapshot) {
    assert!(s.consistent, "no writer died: every reading is consistent");
    let journalled: u64 = s.events.iter().map(|e| e.total).sum();
    assert_eq!(
        journalled,
        s.next_seq - 1,
        "per-kind totals match the journal head"
    );
    for g in &s.generations {
        let running = s
            .workers
            .iter()
            .filter(|w| w.id.generation == g.id && w.state == WorkerState::Running)
            .count() as u32;
        assert_eq!(g.live_workers, running, "census of generation {}", g.id);
    }
}

#[test]
fn an_observer_sees_what_the_registry_sees_and_writes_nothing() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let generation = master.generation();
    let _workers = scratch.workers(generation, 3);
    let registry = scratch.open();
    let locked = registry.snapshot().unwrap();

    let before = fs::read(scratch.registry()).unwrap();
    let observer = Observer::open(scratch.registry()).unwrap();
    let observed = observer.snapshot();
    let events = observer.events_since(1);
    let after = fs::read(scratch.registry()).unwrap();
    assert!(before == after, "an observer changes no byte of the file");

    check_consistent(&observed);
    assert!(!observed.previous_boot);
    assert_eq!(observed.generations, locked.generations);
    let ids = |s: &Snapshot| {
        s.workers
            .iter()
            .map(|w| (w.id, w.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&observed), ids(&locked));
    assert_eq!(observed.next_seq, locked.next_seq);
    assert_eq!(events.len() as u64, observed.next_seq - 1);
    assert_eq!(events, registry.events_since(1));
    assert_eq!(
        observer.size(),
        fs::metadata(scratch.registry()).unwrap().len()
    );
}

#[test]
fn snapshots_taken_while_workers_start_and_exit_are_consistent() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let generation = master.generation();
    let observer = Observer::open(scratch.registry()).unwrap();
    let done = AtomicBool::new(false);
    let readings = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut readings = 0u32;
            while !done.load(Ordering::Relaxed) {
                check_consistent(&observer.snapshot());
                readings += 1;
            }
            readings
        });
        let mut probes: Vec<Probe> = (0..4).map(|_| Probe::spawn(&scratch.registry())).collect();
        for round in 0..50 {
            for (i, p) in probes.iter_mut().enumerate() {
                p.worker(generation, i as u32);
            }
            for p in probes.iter_mut() {
                p.ok(if round % 2 == 0 { "exit" } else { "exit fast" });
            }
        }
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(readings > 0);
    check_consistent(&observer.snapshot());
}

#[test]
fn waiting_for_an_event_sleeps_until_one_is_journalled() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    master.generation();
    let observer = Observer::open(scratch.registry()).unwrap();
    let next = observer.next_seq();

    // Nothing happens: the wait times out, having slept rather than spun.
    let cpu = || {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: a valid out-pointer for getrusage.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
        // SAFETY: getrusage filled it (or left it zeroed).
        let u = unsafe { usage.assume_init() };
        Duration::new(u.ru_utime.tv_sec as u64, u.ru_utime.tv_usec as u32 * 1000)
            + Duration::new(u.ru_stime.tv_sec as u64, u.ru_stime.tv_usec as u32 * 1000)
    };
    let (started, spent) = (Instant::now(), cpu());
    assert!(!observer.wait_for_event(next, Duration::from_millis(300)));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let burnt = cpu() - spent;
    assert!(
        burnt < Duration::from_millis(100),
        "waiting burnt {burnt:?} of CPU"
    );

    // Another process journals an event: the sleeper wakes.
    // Woken, not timed out: well before the timeout.
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let started = Instant::now();
            (
                observer.wait_for_event(next, STEP_TIMEOUT),
                started.elapsed(),
            )
        });
        master.generation();
        let (woken, after) = waiter.join().unwrap();
        assert!(woken);
        assert!(after < STEP_TIMEOUT / 4, "woken after {after:?}");
    });
    assert!(observer.next_seq() > next);
    assert!(
        observer.wait_for_event(next, Duration::ZERO),
        "already there"
    );
}

#[test]
fn an_observer_refuses_what_is_not_a_registry_and_never_creates_one() {
    let scratch = Scratch::new();
    let missing = scratch.path("missing.wm");
    let err = Observer::open(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.wm"), "{err}");
    assert!(!missing.exists(), "an observer never creates the file");

    let empty = scratch.path("empty.wm");
    fs::write(&empty, b"").unwrap();
    let err = Observer::open(&empty).unwrap_err().to_string();
    assert!(err.contains("not initialised"), "{err}");

    let foreign = scratch.path("foreign.wm");
    fs::write(&foreign, vec![0x41u8; 8192]).unwrap();
    let err = Observer::open(&foreign).unwrap_err().to_string();
    assert!(err.contains("not a worker-manager registry"), "{err}");
}

/// nginx with `daemon on`: the process that registered the first generation exits
/// after forking the real master, which is the parent of the workers. Until the
/// registry's next operation adopts it, a reader finds it as its workers' parent.
#[test]
fn a_generation_s_live_master_is_its_workers_parent_once_the_recorded_one_exited() {
    let scratch = Scratch::new();
    let mut starter = Probe::spawn(&scratch.registry());
    let generation = starter.generation();
    let mut workers = scratch.workers(generation, 2);
    let observer = Observer::open(scratch.registry()).unwrap();
    let s = observer.snapshot();
    let recorded = s.live_master(&s.generations[0]).expect("a live master");
    assert_eq!(recorded.pid, starter.pid);

    starter.kill9();
    let s = observer.snapshot();
    let g = &s.generations[0];
    assert_eq!(
        g.master_pid, starter.pid,
        "nothing adopted the real master yet"
    );
    assert_eq!(
        s.live_master(g),
        Some(Identity::current()),
        "the workers' parent: this test"
    );

    for worker in &mut workers {
        worker.kill9();
    }
    let s = observer.snapshot();
    assert_eq!(s.live_master(&s.generations[0]), None, "no worker to ask");
}
