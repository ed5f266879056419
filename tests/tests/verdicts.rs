//! nginx's verdict on a configuration, as the master reports it when it closes one
//! (the end of a Lua VM): committed, or failed after it registered. A configuration
//! that is not committed replaces nothing; one that failed is aborted at once.
//! Also the master killed alone, its workers left running as orphans.

mod common;

use common::{Probe, Scratch};
use worker_manager::{AbortCause, Detail, EventKind, ExitReason, Registry, RunEnd, RunState};

fn of_kind(registry: &Registry, kind: EventKind) -> Vec<worker_manager::Event> {
    registry
        .events_since(1)
        .into_iter()
        .filter(|e| e.kind() == kind)
        .collect()
}

/// A reload that nginx gives up after `init_by_lua` (a port it cannot bind): its
/// configuration is closed before it was committed.
#[test]
fn a_failed_reload_is_aborted_at_once_and_replaces_nothing() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let mut old = scratch.workers(g1, 2);
    let g2 = master.generation();
    master.ok(&format!("close {g2}"));

    let registry = scratch.open();
    let aborts = of_kind(&registry, EventKind::GenerationAbort);
    assert_eq!(aborts.len(), 1);
    assert_eq!(aborts[0].generation, g2);
    assert_eq!(
        aborts[0].detail,
        Detail::GenerationAbort {
            cause: AbortCause::Failed
        }
    );
    let s = registry.snapshot().unwrap();
    let verdict = s.verdict.expect("a verdict");
    assert_eq!((verdict.generation, verdict.committed), (g2, false));
    assert!(
        s.generations.iter().all(|g| g.id != g2),
        "{:?}",
        s.generations
    );
    assert_eq!(s.run_state, Some(RunState::Running));

    // The old workers, told to quit, stop: nothing replaces them.
    old[0].ok("exit graceful");
    old[1].ok("exit graceful");
    let exits = of_kind(&registry, EventKind::WorkerExit);
    assert!(exits.iter().all(|e| e.counts.next.is_none()), "{exits:?}");
    assert!(exits.iter().all(|e| matches!(
        e.detail,
        Detail::WorkerExit {
            reason: ExitReason::Stop,
            ..
        }
    )));
    let end = of_kind(&registry, EventKind::MasterExit);
    assert_eq!(end.len(), 1);
    assert_eq!(end[0].counts.next, None, "the node stops");
    assert_eq!(
        registry.snapshot().unwrap().run_state,
        Some(RunState::Ended(RunEnd::Clean))
    );
}

/// The master closes the previous configuration once it committed the next one,
/// before it forks the next one's workers: the old workers see their successor
/// however late its workers register.
#[test]
fn closing_the_previous_configuration_commits_the_next() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let mut old = scratch.workers(g1, 1);
    let g2 = master.generation();
    let registry = scratch.open();
    assert!(registry.snapshot().unwrap().generations[1]
        .committed
        .is_none());

    // Before the commit, a worker that exits sees no successor.
    master.ok(&format!("close {g1}"));
    let s = registry.snapshot().unwrap();
    assert!(s
        .generations
        .iter()
        .any(|g| g.id == g2 && g.committed.is_some()));
    let verdict = s.verdict.expect("a verdict");
    assert_eq!((verdict.generation, verdict.committed), (g2, true));
    assert!(of_kind(&registry, EventKind::GenerationAbort).is_empty());

    old[0].ok("exit graceful");
    let exit = &of_kind(&registry, EventKind::WorkerExit)[0];
    assert!(
        matches!(
            exit.detail,
            Detail::WorkerExit {
                reason: ExitReason::Reload,
                ..
            }
        ),
        "{exit}"
    );
    assert_eq!(
        exit.counts.next,
        Some(0),
        "the committed successor, no worker yet"
    );
    let end = &of_kind(&registry, EventKind::MasterExit)[0];
    assert_eq!(end.counts.next, Some(0));

    // The master's exit closes the last configuration: nothing newer, nothing to do.
    let mut new = scratch.workers(g2, 1);
    master.ok(&format!("close {g2}"));
    assert!(of_kind(&registry, EventKind::GenerationAbort).is_empty());
    new[0].ok("exit graceful");
    assert_eq!(
        registry.snapshot().unwrap().run_state,
        Some(RunState::Ended(RunEnd::Clean))
    );
}

/// A start that fails after `init_by_lua` leaves no run going.
#[test]
fn a_failed_start_ends_the_run_it_began() {
    let scratch = Scratch::new();
    let mut first = Probe::spawn(&scratch.registry());
    let g = first.generation();
    first.ok(&format!("close {g}"));
    let registry = scratch.open();
    assert_eq!(of_kind(&registry, EventKind::GenerationAbort).len(), 1);
    let s = registry.snapshot().unwrap();
    assert!(s.generations.is_empty());
    assert_ne!(s.run_state, Some(RunState::Running), "{:?}", s.run_state);
}

/// `kill -9` of the master alone: its workers run on as orphans, a live generation,
/// and a start that fails meanwhile changes nothing of it; when they end, nothing
/// replaces them. (How the run ended depends on the workers' real parentage: the
/// nginx tests check it.)
#[test]
fn the_master_killed_alone_leaves_its_orphans_a_live_generation() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let mut orphans = scratch.workers(g1, 2);
    master.kill9();
    orphans[0].ok("sweep");
    let registry = scratch.open();
    assert_eq!(
        registry.snapshot().unwrap().live(g1),
        2,
        "the orphans live on"
    );
    assert!(of_kind(&registry, EventKind::MasterExit).is_empty());

    // A start while they hold the port fails after init_by_lua.
    let mut failed = Probe::spawn(&scratch.registry());
    let g2 = failed.generation();
    failed.ok(&format!("close {g2}"));
    assert_eq!(registry.snapshot().unwrap().live(g1), 2);

    // The orphans are stopped (TERM: a fast stop).
    orphans[0].ok("exit fast");
    orphans[1].ok("exit fast");
    let exits = of_kind(&registry, EventKind::WorkerExit);
    assert!(exits.iter().all(|e| e.counts.next.is_none()), "{exits:?}");
    let end = of_kind(&registry, EventKind::MasterExit);
    assert_eq!(end.len(), 1);
    assert_eq!(end[0].counts.next, None);
    assert!(matches!(
        registry.snapshot().unwrap().run_state,
        Some(RunState::Ended(_))
    ));
}

/// A cache manager closes its copy of the master's Lua VM as it starts, before any
/// worker registered: that is no verdict on the configuration.
#[test]
fn a_process_other_than_the_master_closing_the_configuration_aborts_nothing() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g = master.generation();
    let mut helper = Probe::spawn(&scratch.registry());
    helper.ok(&format!("close {g}"));
    let registry = scratch.open();
    assert!(of_kind(&registry, EventKind::GenerationAbort).is_empty());
    let mut w = scratch.workers(g, 1);
    assert_eq!(registry.snapshot().unwrap().live(g), 1);
    w[0].ok("exit graceful");
}

/// A reload before any worker of the first configuration registered: closing that
/// configuration commits it (it was serving) and the next.
#[test]
fn a_reload_before_the_first_workers_registered_commits_both() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let g2 = master.generation();
    master.ok(&format!("close {g1}"));
    let registry = scratch.open();
    assert!(of_kind(&registry, EventKind::GenerationAbort).is_empty());
    let s = registry.snapshot().unwrap();
    assert!(
        s.generations.iter().all(|g| g.committed.is_some()),
        "{:?}",
        s.generations
    );
    assert_eq!(
        s.verdict.map(|v| (v.generation, v.committed)),
        Some((g2, true))
    );
    // The first configuration's slow worker still registers, and sees its successor.
    let mut late = scratch.workers(g1, 1);
    late[0].ok("exit graceful");
    let exit = &of_kind(&registry, EventKind::WorkerExit)[0];
    assert!(
        matches!(
            exit.detail,
            Detail::WorkerExit {
                reason: ExitReason::Reload,
                ..
            }
        ),
        "{exit}"
    );
}
