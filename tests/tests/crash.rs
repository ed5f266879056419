//! Deaths with real `kill -9`: outside the lock, inside a callback holding the lock,
//! with a waiter blocked on the lock, and many processes starting at once.

mod common;

use std::time::{Duration, Instant};

use common::json::reason;
use common::{shown, Probe, Scratch};
use worker_manager::{Detail, Detection, Event, EventKind, ExitReason, LockOp, Registry, WorkerId};

#[test]
fn a_worker_killed_outside_the_lock_is_reported_once_and_its_respawn_is_recognised() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g = master.generation();
    let mut w = scratch.workers(g, 2);
    let dead_pid = w[1].pid;
    w[1].kill9();

    // The respawn (same generation, same index) detects the death as it registers.
    let mut respawn = Probe::spawn(&scratch.registry());
    respawn.worker(g, 1);
    let dead = WorkerId {
        generation: g,
        pid: dead_pid,
        index: 1,
    };
    let crash = respawn.one(EventKind::WorkerCrash);
    assert_eq!(
        crash.detail,
        Detail::WorkerCrash {
            worker: dead,
            detection: Detection::OwnerDied,
            held_lock: false,
            detected_by: respawn.pid
        },
        "{crash}"
    );
    assert_eq!(
        crash.counts.mine, 1,
        "the dead one no longer counts: {crash}"
    );
    let start = respawn.one(EventKind::WorkerStart);
    assert_eq!(
        start.detail,
        Detail::WorkerStart {
            worker: WorkerId {
                pid: respawn.pid,
                ..dead
            },
            replaces: Some(dead)
        },
        "{start}"
    );
    assert_eq!(
        start.counts.mine, 2,
        "never more than the real workers: {start}"
    );
    // No master_exit: the master is alive and respawned the worker.
    assert!(respawn.events_of(EventKind::MasterExit).is_empty());

    // Exactly once: later sweeps by anyone report nothing more.
    w[0].ok("sweep");
    master.ok("sweep");
    let registry = scratch.open();
    let crashes = registry
        .events_since(0)
        .iter()
        .filter(|e| e.kind() == EventKind::WorkerCrash)
        .count();
    assert_eq!(crashes, 1);
    let snapshot = registry.snapshot().unwrap();
    assert_eq!(snapshot.live(g), 2);
    assert_eq!(snapshot.generations[0].respawns, 1);
    assert_eq!(snapshot.stats.crashes, 1);
}

#[test]
fn the_last_worker_killed_while_draining_still_fires_master_exit() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let mut old = scratch.workers(g1, 2);
    // kill -9, then an immediate reload before anyone noticed the death.
    old[0].kill9();
    let g2 = master.generation();
    let mut new = Probe::spawn(&scratch.registry());
    new.worker(g2, 0);
    old[1].ok("exit graceful");
    let all: Vec<&Event> = master
        .events
        .iter()
        .chain(&new.events)
        .chain(&old[1].events)
        .collect();
    let of = |kind| -> Vec<&Event> { all.iter().copied().filter(|e| e.kind() == kind).collect() };
    let crashes = of(EventKind::WorkerCrash);
    assert_eq!(crashes.len(), 1, "{}", shown(all.iter().copied()));
    assert_eq!(crashes[0].worker().map(|w| w.pid), Some(old[0].pid));
    let exits = of(EventKind::MasterExit);
    assert_eq!(exits.len(), 1, "{}", shown(all.iter().copied()));
    assert_eq!(
        (exits[0].generation, reason(exits[0])),
        (g1, ExitReason::Reload),
        "{}",
        exits[0]
    );
}

#[test]
fn a_holder_killed_inside_a_callback_is_recovered_by_the_next_locker() {
    let scratch = Scratch::new();
    let registry = scratch.open();
    let g = registry
        .register_generation(&Default::default(), |_| {})
        .unwrap();
    let mut other = Probe::spawn(&scratch.registry());
    other.worker(g, 0);

    // This worker stays inside its worker_start callback, holding the lock.
    let mut holder = Probe::spawn(&scratch.registry());
    holder.send(&format!("worker-stall {g} 1"));
    holder.wait_for("stalled");
    let holder_pid = holder.pid;
    // A waiter blocks on the lock now (generous timeout).
    let mut waiter = Probe::spawn_with_lock_timeout(&scratch.registry(), 20_000);
    waiter.send("sweep");
    holder.kill9();
    waiter.wait_for("ok");

    let recovered = waiter.one(EventKind::LockRecovered);
    assert_eq!(
        recovered.detail,
        Detail::LockRecovered {
            holder_pid,
            holder_op: LockOp::RegisterWorker
        },
        "{recovered}"
    );
    let crash = waiter.one(EventKind::WorkerCrash);
    assert!(
        matches!(
            crash.detail,
            Detail::WorkerCrash {
                worker,
                held_lock: true,
                ..
            } if worker.pid == holder_pid
        ),
        "{crash}"
    );
    assert_eq!(crash.counts.mine, 1, "{crash}");

    // The lock works again for everyone, and counts are right.
    other.ok("beat");
    let snapshot = registry.snapshot().unwrap();
    assert_eq!(snapshot.live(g), 1);
    assert_eq!(snapshot.stats.lock_recoveries, 1);
    other.ok("exit graceful");
    // It was the last live worker: the generation ends with it.
    let exit = other.one(EventKind::MasterExit);
    assert_eq!(reason(exit), ExitReason::Stop, "{exit}");
    let journal = registry.events_since(0);
    let crashes: Vec<_> = journal
        .iter()
        .filter(|e| e.kind() == EventKind::WorkerCrash)
        .collect();
    assert_eq!(crashes.len(), 1);
    assert!(matches!(
        crashes[0].detail,
        Detail::WorkerCrash {
            detection: Detection::OwnerDied,
            held_lock: true,
            ..
        }
    ));
}

/// A registry with a generation whose worker 0 stays inside its worker_start
/// callback, holding the lock.
fn stalled_holder(scratch: &Scratch) -> (Registry, Probe) {
    let registry = scratch.open();
    let g = registry
        .register_generation(&Default::default(), |_| {})
        .unwrap();
    let mut holder = Probe::spawn(&scratch.registry());
    holder.send(&format!("worker-stall {g} 0"));
    holder.wait_for("stalled");
    (registry, holder)
}

#[test]
fn a_periodic_sweep_skips_a_held_lock_and_recovers_a_dead_holder() {
    let scratch = Scratch::new();
    let (registry, mut holder) = stalled_holder(&scratch);

    // Held by a live process: skipped at once, not waited for (the lock timeout is
    // 30 s; the bound is only against waiting).
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    assert!(!registry.try_sweep(|e| seen.push(*e)).unwrap());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(seen.is_empty());

    // Held by a dead process: taken, repaired, and the death reported.
    let holder_pid = holder.pid;
    holder.kill9();
    assert!(registry.try_sweep(|e| seen.push(*e)).unwrap());
    let kinds: Vec<EventKind> = seen.iter().map(|e| e.kind()).collect();
    // The holder was the only worker, and the leader: no worker leads now.
    assert_eq!(
        kinds,
        [
            EventKind::LockRecovered,
            EventKind::WorkerCrash,
            EventKind::LeaderElected
        ],
        "{seen:?}"
    );
    assert_eq!(seen[1].worker().unwrap().pid, holder_pid);
    assert!(registry.try_sweep(|_| {}).unwrap(), "free again");
}

#[test]
fn a_lock_held_too_long_times_out_with_the_holder_named() {
    let scratch = Scratch::new();
    let (_registry, holder) = stalled_holder(&scratch);
    let mut impatient = Probe::spawn_with_lock_timeout(&scratch.registry(), 50);
    let started = Instant::now();
    let err = impatient.cmd("sweep").unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(err.contains("not acquired within 50ms"), "{err}");
    assert!(
        err.contains(&format!("held by pid {} for register_worker", holder.pid)),
        "{err}"
    );
}

#[test]
fn many_workers_starting_at_once_all_count_exactly() {
    const N: u32 = 32;
    let scratch = Scratch::new();
    let registry = scratch.open();
    let g = registry
        .register_generation(&Default::default(), |_| {})
        .unwrap();
    let mut workers: Vec<Probe> = (0..N).map(|_| Probe::spawn(&scratch.registry())).collect();
    for (i, p) in workers.iter_mut().enumerate() {
        p.send(&format!("worker {g} {i}"));
    }
    let mut seen_mine = Vec::new();
    for p in workers.iter_mut() {
        p.wait_for("ok");
        seen_mine.push(p.one(EventKind::WorkerStart).counts.mine);
    }
    // Serialized by the lock: each start saw a distinct count, 1..=N.
    seen_mine.sort_unstable();
    assert_eq!(seen_mine, (1..=N).collect::<Vec<_>>());
    assert_eq!(registry.snapshot().unwrap().live(g), N);
    for p in workers.iter_mut().take(N as usize / 2) {
        p.kill9();
    }
    let mut crashes = 0;
    registry
        .sweep(|e| crashes += (e.kind() == EventKind::WorkerCrash) as u32)
        .unwrap();
    assert_eq!(crashes, N / 2);
    assert_eq!(registry.snapshot().unwrap().live(g), N / 2);
}
