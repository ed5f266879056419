//! Deaths at the worst moments, forced: a process that holds the registry lock kills
//! itself with SIGKILL at a crash point (between an event's journal entry and the
//! header counters, between the entry and its effects on the tables). After the next
//! locker's repair, every counter agrees with the journal, no event is reported
//! twice or lost, and the events whose callbacks never ran are delivered again,
//! flagged as such.

mod common;

use common::{kill9, Probe, Scratch};
use worker_manager::{Detail, Event, EventKind, Registry, RunEnd, RunState, Snapshot, StartKind};

/// Every counter of the header and of the generations, recounted from the journal.
fn assert_counters_agree(registry: &Registry) {
    let s: Snapshot = registry.snapshot().unwrap();
    let journal: Vec<Event> = registry.events_since(1);
    assert_eq!(
        journal.len() as u64,
        s.next_seq - 1,
        "the journal has no gap"
    );
    let of = |kind: EventKind| journal.iter().filter(|e| e.kind() == kind).count() as u64;
    for tally in &s.events {
        assert_eq!(tally.total, of(tally.kind), "total of {}", tally.kind);
    }
    let started = |kind: StartKind| {
        journal
            .iter()
            .filter(|e| matches!(e.detail, Detail::MasterStart { kind: k, .. } if k == kind))
            .count() as u64
    };
    let respawns = journal
        .iter()
        .filter(|e| {
            matches!(
                e.detail,
                Detail::WorkerStart {
                    replaces: Some(_),
                    ..
                }
            )
        })
        .count() as u64;
    let stats = &s.stats;
    let expected = [
        ("crashes", stats.crashes, of(EventKind::WorkerCrash)),
        ("hangs", stats.hangs, of(EventKind::WorkerHang)),
        ("aborts", stats.aborts, of(EventKind::GenerationAbort)),
        (
            "lock_recoveries",
            stats.lock_recoveries,
            of(EventKind::LockRecovered),
        ),
        ("starts", stats.starts, started(StartKind::Start)),
        ("reloads", stats.reloads, started(StartKind::Reload)),
        ("restarts", stats.restarts, started(StartKind::Restart)),
        ("upgrades", stats.upgrades, started(StartKind::Upgrade)),
        ("respawns", stats.respawns, respawns),
    ];
    for (name, counted, journalled) in expected {
        assert_eq!(
            counted, journalled,
            "{name}: header {counted}, journal {journalled}"
        );
    }
    for g in &s.generations {
        let crashes = journal
            .iter()
            .filter(|e| e.kind() == EventKind::WorkerCrash && e.generation == g.id)
            .count() as u64;
        assert_eq!(g.crashes, crashes, "crashes of generation {}", g.id);
    }
}

fn journalled(registry: &Registry, kind: EventKind) -> Vec<Event> {
    registry
        .events_since(1)
        .into_iter()
        .filter(|e| e.kind() == kind)
        .collect()
}

/// The two points of every journal entry: committed but not counted, counted but
/// the head not moved.
const JOURNAL_POINTS: [&str; 2] = ["journal-committed", "journal-counted"];

/// Those, and the point between an entry and its effects on the tables.
const EVERY_POINT: [&str; 3] = ["journal-committed", "journal-counted", "after-entry"];

/// A probe that runs `command` and kills itself at `point` while writing an event
/// of `kind`; returns its pid.
fn dies_at(scratch: &Scratch, point: &str, kind: EventKind, command: &str) -> u32 {
    let mut probe = Probe::spawn_crashing_at(&scratch.registry(), &format!("{point}@{kind}"));
    probe.dies_doing(command);
    probe.pid
}

/// A worker dies inside a callback holding the lock; the process that recovers the
/// lock dies at `point` while journalling the recovery; a third recovers from it.
#[test]
fn a_recoverer_killed_while_journalling_the_recovery_leaves_counters_exact() {
    for point in JOURNAL_POINTS {
        let scratch = Scratch::new();
        let mut master = Probe::spawn(&scratch.registry());
        let g = master.generation();
        let mut holder = Probe::spawn(&scratch.registry());
        holder.send(&format!("worker-stall {g} 0"));
        holder.wait_for("stalled");
        holder.kill9();

        let recoverer = dies_at(&scratch, point, EventKind::LockRecovered, "sweep");
        let mut next = Probe::spawn(&scratch.registry());
        next.ok("sweep");

        let registry = scratch.open();
        assert_counters_agree(&registry);
        let holders: Vec<u32> = journalled(&registry, EventKind::LockRecovered)
            .iter()
            .filter_map(|e| match e.detail {
                Detail::LockRecovered { holder_pid, .. } => Some(holder_pid),
                _ => None,
            })
            .collect();
        assert_eq!(
            holders,
            [holder.pid, recoverer],
            "{point}: each recovery names the process that died holding the lock"
        );
        let crashes = journalled(&registry, EventKind::WorkerCrash);
        assert_eq!(crashes.len(), 1, "{point}: {crashes:?}");
        // The recoverer died before running a callback: the next locker runs the
        // first recovery's callbacks, flagged, then its own.
        let redelivered = next.events.iter().filter(|e| e.redelivered).count();
        assert!(redelivered >= 1, "{point}:\n{}", next.shown());
        assert!(
            registry.observe().lock.is_none(),
            "{point}: the lock is free"
        );
    }
}

/// The sweeper dies right after journalling a crash (`after-entry`: before the slot
/// is marked dead), or between the crash's entry and its counters.
#[test]
fn a_sweeper_killed_after_journalling_a_crash_reports_it_once() {
    for point in EVERY_POINT {
        let scratch = Scratch::new();
        let mut master = Probe::spawn(&scratch.registry());
        let g = master.generation();
        let mut workers = scratch.workers(g, 2);
        let victim = workers[1].pid;
        workers[1].kill9();

        let sweeper = dies_at(&scratch, point, EventKind::WorkerCrash, "sweep");
        workers[0].ok("sweep");
        master.ok("sweep");

        let registry = scratch.open();
        assert_counters_agree(&registry);
        let crashes = journalled(&registry, EventKind::WorkerCrash);
        assert_eq!(crashes.len(), 1, "{point}: one crash, once: {crashes:?}");
        assert_eq!(crashes[0].worker().map(|w| w.pid), Some(victim));
        assert!(
            matches!(crashes[0].detail, Detail::WorkerCrash { detected_by, .. } if detected_by == sweeper),
            "{point}: reported by the sweeper that died"
        );
        assert_eq!(
            crashes[0].counts.mine, 1,
            "{point}: the dead one is not counted"
        );
        // Its callback never ran in the sweeper: the next locker runs it, flagged.
        let redelivered: Vec<&Event> = workers[0]
            .events_of(EventKind::WorkerCrash)
            .into_iter()
            .filter(|e| e.redelivered)
            .collect();
        assert_eq!(redelivered.len(), 1, "{point}:\n{}", workers[0].shown());
        assert_eq!(redelivered[0].seq, crashes[0].seq, "{point}");
        assert_eq!(registry.snapshot().unwrap().live(g), 1);
    }
}

/// The last worker of a replaced generation is killed; the process that finds it
/// dies after journalling the generation's `master_exit`, before ending it.
#[test]
fn a_sweeper_killed_after_journalling_a_master_exit_ends_the_generation_once() {
    for point in EVERY_POINT {
        let scratch = Scratch::new();
        let mut master = Probe::spawn(&scratch.registry());
        let g1 = master.generation();
        let mut old = scratch.workers(g1, 1);
        let g2 = master.generation();
        let mut new = scratch.workers(g2, 1);
        old[0].kill9();

        dies_at(&scratch, point, EventKind::MasterExit, "sweep");
        new[0].ok("sweep");
        new[0].ok("sweep");

        let registry = scratch.open();
        assert_counters_agree(&registry);
        let exits = journalled(&registry, EventKind::MasterExit);
        assert_eq!(exits.len(), 1, "{point}: {exits:?}");
        assert_eq!(exits[0].generation, g1);
        let s = registry.snapshot().unwrap();
        assert!(
            s.generations.iter().all(|g| g.id != g1),
            "{point}: the ended generation is retired: {:?}",
            s.generations
        );
        assert!(
            new[0]
                .events_of(EventKind::MasterExit)
                .iter()
                .any(|e| e.redelivered && e.generation == g1),
            "{point}:\n{}",
            new[0].shown()
        );
    }
}

/// A generation that never got a worker times out; the sweeper that aborts it dies
/// after journalling the abort, before retiring the generation.
#[test]
fn a_sweeper_killed_after_journalling_an_abort_aborts_once() {
    for point in EVERY_POINT {
        let scratch = Scratch::new();
        let mut master = Probe::spawn(&scratch.registry());
        let g = master.ok("gen 10000 5000 1").parse::<u64>().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));

        dies_at(&scratch, point, EventKind::GenerationAbort, "sweep");
        master.ok("sweep");
        master.ok("sweep");

        let registry = scratch.open();
        assert_counters_agree(&registry);
        let aborts = journalled(&registry, EventKind::GenerationAbort);
        assert_eq!(aborts.len(), 1, "{point}: {aborts:?}");
        assert_eq!(aborts[0].generation, g);
        assert!(registry.snapshot().unwrap().generations.is_empty());
    }
}

/// A worker stops beating; the sweeper that reports the hang dies after its entry.
#[test]
fn a_sweeper_killed_after_journalling_a_hang_reports_it_once() {
    for point in EVERY_POINT {
        let scratch = Scratch::new();
        let mut master = Probe::spawn(&scratch.registry());
        // Hung after 2 s of silence: a margin wide enough for the recovery below to
        // be seen within it however slowly the probes run (valgrind).
        let g = master.ok("gen 1000 1000 60000").parse::<u64>().unwrap();
        let mut workers = scratch.workers(g, 1);
        std::thread::sleep(std::time::Duration::from_millis(2200));

        dies_at(&scratch, point, EventKind::WorkerHang, "sweep");
        master.ok("sweep");
        master.ok("sweep");

        let registry = scratch.open();
        assert_counters_agree(&registry);
        assert_eq!(
            journalled(&registry, EventKind::WorkerHang).len(),
            1,
            "{point}"
        );
        let s = registry.snapshot().unwrap();
        assert!(s.workers.iter().all(|w| w.hung), "{point}: {:?}", s.workers);
        workers[0].ok("beat");
        master.ok("sweep");
        assert_eq!(journalled(&registry, EventKind::WorkerRecover).len(), 1);
        assert_counters_agree(&registry);
    }
}

/// Kills that land anywhere: a probe killed at every crash point of a respawn's
/// registration leaves the registry exact for the next one.
#[test]
fn a_registrant_killed_at_each_point_leaves_the_next_registration_exact() {
    for point in JOURNAL_POINTS {
        let scratch = Scratch::new();
        let mut master = Probe::spawn(&scratch.registry());
        let g = master.generation();
        let mut workers = scratch.workers(g, 1);
        let first = workers[0].pid;
        kill9(first);
        dies_at(
            &scratch,
            point,
            EventKind::WorkerStart,
            &format!("worker {g} 0"),
        );
        let mut again = Probe::spawn(&scratch.registry());
        again.worker(g, 0);
        let registry = scratch.open();
        assert_counters_agree(&registry);
        assert_eq!(registry.snapshot().unwrap().live(g), 1);
        drop(workers.remove(0));
    }
}

/// A worker dies reporting its own exit, between the `worker_exit` entry and freeing
/// its slot (nginx's escalation to SIGKILL during a stop can land there): its exit is
/// reported once, and no crash; the generation ends, uncleanly.
#[test]
fn a_worker_killed_reporting_its_exit_is_not_a_crash_too() {
    for point in EVERY_POINT {
        let scratch = Scratch::new();
        let mut master = Probe::spawn(&scratch.registry());
        let g = master.generation();
        let mut exiting =
            Probe::spawn_crashing_at(&scratch.registry(), &format!("{point}@worker_exit"));
        exiting.worker(g, 0);
        exiting.dies_doing("exit graceful");
        master.ok("sweep");

        let registry = scratch.open();
        assert_counters_agree(&registry);
        assert_eq!(
            journalled(&registry, EventKind::WorkerExit).len(),
            1,
            "{point}"
        );
        assert!(
            journalled(&registry, EventKind::WorkerCrash).is_empty(),
            "{point}: not a crash"
        );
        assert_eq!(
            journalled(&registry, EventKind::MasterExit).len(),
            1,
            "{point}"
        );
        let s = registry.snapshot().unwrap();
        assert!(s.workers.is_empty(), "{point}: {:?}", s.workers);
        assert_eq!(
            s.run_state,
            Some(RunState::Ended(RunEnd::Unclean)),
            "{point}"
        );
    }
}

/// The first process to take the lock after a holder died hands events to no
/// callback (a snapshot): the repair's events, and the dead holder's, go to the
/// callbacks of the next operation, flagged.
#[test]
fn events_a_snapshot_takes_over_go_to_the_next_operation_s_callbacks() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g = master.generation();
    let mut holder = Probe::spawn(&scratch.registry());
    holder.send(&format!("worker-stall {g} 0"));
    holder.wait_for("stalled");
    holder.kill9();
    scratch.open().snapshot().unwrap();
    let mut next = Probe::spawn(&scratch.registry());
    next.ok("sweep");
    for kind in [EventKind::LockRecovered, EventKind::WorkerCrash] {
        let delivered = next.one(kind);
        assert!(delivered.redelivered, "{delivered}");
    }
    // Delivered now: not again.
    master.ok("sweep");
    assert!(
        master.events_of(EventKind::WorkerCrash).is_empty(),
        "{}",
        master.shown()
    );
}
