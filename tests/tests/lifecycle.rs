//! The lifecycle rules with real processes: starts, reloads, upgrades, exits,
//! restarts, aborts, hangs.

mod common;

use std::time::Duration;

use common::{Probe, Scratch};
use worker_manager::{
    Detail, EventKind, ExitReason, GenerationConfig, Registry, RunEnd, StartKind,
};

fn kinds(registry: &Registry) -> Vec<EventKind> {
    registry.events_since(0).iter().map(|e| e.kind()).collect()
}

#[test]
fn start_workers_reload_and_graceful_stop() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    assert!(
        master.events[0].contains("kind=start"),
        "{:?}",
        master.events
    );
    assert!(master.events[0].contains("n_prev=nil n_mine=0 n_next=nil"));

    let mut w: Vec<Probe> = (0..3).map(|_| Probe::spawn(&scratch.registry())).collect();
    for (i, p) in w.iter_mut().enumerate() {
        p.worker(g1, i as u32);
        let start = p.events_of("worker_start")[0];
        assert!(start.contains(&format!("n_mine={}", i + 1)), "{start}");
        assert!(start.contains("respawn=false"), "{start}");
    }

    // Reload: the same master registers again; new workers start before old ones exit.
    let g2 = master.generation();
    assert!(g2 > g1);
    let reload = master.events_of("master_start")[1].clone();
    assert!(reload.contains("kind=reload"), "{reload}");
    assert!(reload.contains("n_prev=3 n_mine=0 n_next=nil"), "{reload}");
    let mut n: Vec<Probe> = (0..2).map(|_| Probe::spawn(&scratch.registry())).collect();
    for (i, p) in n.iter_mut().enumerate() {
        p.worker(g2, i as u32);
        assert!(p.events_of("worker_start")[0]
            .contains(&format!("n_prev=3 n_mine={} n_next=nil", i + 1)));
    }
    let snapshot = scratch.open().snapshot().unwrap();
    let counts = |prev, mine, next| worker_manager::Counts { prev, mine, next };
    assert_eq!(snapshot.counts(g1), counts(None, 3, Some(2)));
    assert_eq!(snapshot.counts(g2), counts(Some(3), 2, None));
    for (i, p) in w.iter_mut().enumerate() {
        p.ok("exit graceful");
        let exit = p.events_of("worker_exit")[0];
        assert!(exit.contains("reason=reload"), "{exit}");
        assert!(
            exit.contains(&format!("n_mine={} n_next=2", 3 - i)),
            "{exit}"
        );
    }
    // The last old worker fired the old generation's master_exit.
    let last = w[2].events_of("master_exit");
    assert_eq!(last.len(), 1);
    assert!(last[0].contains(&format!("id={g1} ")) && last[0].contains("reason=reload"));
    assert!(
        last[0].contains("n_prev=nil n_mine=0 n_next=2"),
        "{}",
        last[0]
    );
    assert!(w[0].events_of("master_exit").is_empty());

    // Graceful stop: nothing replaces generation 2.
    for p in n.iter_mut() {
        p.ok("exit graceful");
        assert!(p.events_of("worker_exit")[0].contains("reason=stop"));
    }
    let stop = n[1].events_of("master_exit");
    assert!(
        stop[0].contains("reason=stop") && stop[0].contains("n_next=nil"),
        "{}",
        stop[0]
    );

    let registry = scratch.open();
    let snapshot = registry.snapshot().unwrap();
    assert_eq!(
        snapshot.run_state,
        Some(worker_manager::RunState::Ended(RunEnd::Clean))
    );
    assert_eq!(snapshot.live_workers().count(), 0);
    // Only the newest (exited) generation is still tracked.
    assert_eq!(snapshot.generations.len(), 1);
    assert_eq!(snapshot.generations[0].id, g2);

    // Restart after a clean stop: ids continue.
    drop(master);
    let mut again = Probe::spawn(&scratch.registry());
    let g3 = again.generation();
    assert!(g3 > g2);
    let restart = again.events_of("master_start")[0];
    assert!(
        restart.contains("kind=restart") && restart.contains("previous_run=clean"),
        "{restart}"
    );
    assert!(restart.contains("n_prev=nil"), "{restart}");
    assert_eq!(registry.snapshot().unwrap().generations.len(), 1);
}

#[test]
fn fast_stop_reports_fast_stop_and_ends_the_generation() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g = master.generation();
    let mut w = scratch.workers(g, 2);
    for p in w.iter_mut() {
        p.ok("exit fast");
        assert!(p.events_of("worker_exit")[0].contains("reason=fast_stop"));
    }
    assert!(w[1].events_of("master_exit")[0].contains("reason=fast_stop"));
}

#[test]
fn kill_of_everything_then_restart_is_unclean_and_reports_each_death() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g = master.generation();
    let mut w = scratch.workers(g, 3);
    master.kill9();
    for p in w.iter_mut() {
        p.kill9();
    }
    let mut next = Probe::spawn(&scratch.registry());
    let g2 = next.generation();
    assert!(g2 > g);
    assert_eq!(next.events_of("worker_crash").len(), 3, "{:?}", next.events);
    let exit = next.events_of("master_exit");
    assert_eq!(exit.len(), 1);
    assert!(
        exit[0].contains("reason=stop") && exit[0].contains("n_next=nil"),
        "{}",
        exit[0]
    );
    let start = next.events_of("master_start")[0];
    assert!(
        start.contains("kind=restart") && start.contains("previous_run=unclean"),
        "{start}"
    );
    assert!(start.contains("n_prev=nil"), "{start}");
}

#[test]
fn binary_upgrade_continues_ids_and_old_exit_sees_the_new_generation() {
    let scratch = Scratch::new();
    let mut old_master = Probe::spawn(&scratch.registry());
    let g1 = old_master.generation();
    let mut old = Probe::spawn(&scratch.registry());
    old.worker(g1, 0);

    let (g2, new_master) = old_master.upgrade();
    assert!(g2 > g1);
    let start = old_master.events_of("master_start")[1];
    assert!(
        start.contains("kind=upgrade") && start.contains(&format!("master_pid={new_master}")),
        "{start}"
    );
    assert!(start.contains("n_prev=1 n_mine=0 n_next=nil"), "{start}");

    let mut new = Probe::spawn(&scratch.registry());
    new.worker(g2, 0);
    old.ok("exit graceful");
    assert!(old.events_of("worker_exit")[0].contains("reason=upgrade"));
    let exit = old.events_of("master_exit")[0];
    assert!(
        exit.contains("reason=upgrade") && exit.contains("n_next=1"),
        "{exit}"
    );
}

#[test]
fn an_unrelated_master_is_refused_while_the_first_lives() {
    let scratch = Scratch::new();
    let mut first = Probe::spawn(&scratch.registry());
    first.generation();
    let mut second = Probe::spawn(&scratch.registry());
    let err = second.cmd("gen").unwrap_err();
    assert!(err.contains("in use by another running master"), "{err}");
    assert!(err.contains(&first.pid.to_string()), "{err}");
}

#[test]
fn a_generation_without_workers_is_aborted_when_superseded_or_timed_out() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let mut w = Probe::spawn(&scratch.registry());
    w.worker(g1, 0);
    // A reload whose workers never come (nginx: the new configuration failed to bind).
    let g2 = master.ok("gen 10000 5000 50").parse::<u64>().unwrap();
    let registry = scratch.open();
    // The start timeout is 50 ms.
    let aborted: Vec<_> = common::sweep_until(&registry, EventKind::GenerationAbort)
        .into_iter()
        .filter(|e| e.kind() == EventKind::GenerationAbort)
        .collect();
    assert_eq!(aborted[0].generation, g2);
    assert!(matches!(
        aborted[0].detail,
        Detail::GenerationAbort {
            cause: worker_manager::AbortCause::TimedOut
        }
    ));
    // The old worker now stops: nothing replaced it.
    w.ok("exit graceful");
    assert!(w.events_of("worker_exit")[0].contains("reason=stop"));

    // Superseded: a newer generation registered while this one still waited for
    // workers, and the grace (SUPERSEDED_GRACE, shorter than its 10 s start timeout)
    // passed. With a start timeout shorter than the grace, the older one would time
    // out first.
    let mut m2 = Probe::spawn(&scratch.registry());
    let g3: u64 = m2.ok("gen 10000 5000 10000").parse().unwrap();
    let g4 = m2.generation();
    assert!(g4 > g3);
    let superseded: Vec<_> = common::sweep_until(&registry, EventKind::GenerationAbort)
        .into_iter()
        .filter_map(|e| match e.detail {
            Detail::GenerationAbort { cause } => Some((e.generation, cause)),
            _ => None,
        })
        .collect();
    assert_eq!(superseded, [(g3, worker_manager::AbortCause::Superseded)]);
    assert!(kinds(&registry).contains(&EventKind::GenerationAbort));

    // Two reloads in a row: the first one's workers, registering after the second
    // reload, are still welcome.
    let g5 = m2.generation();
    let g6 = m2.generation();
    let mut late = Probe::spawn(&scratch.registry());
    late.worker(g5, 0);
    assert!(g6 > g5);
}

#[test]
fn a_silent_worker_is_reported_hung_then_recovered() {
    let scratch = Scratch::new();
    let registry = scratch.open();
    let config = GenerationConfig {
        interval: Duration::from_millis(20),
        failed: Duration::from_millis(20),
        ..GenerationConfig::default()
    };
    let g = registry.register_generation(&config, |_| {}).unwrap();
    let mut w = Probe::spawn(&scratch.registry());
    w.worker(g, 0);
    let mut seen: Vec<EventKind> = common::sweep_until(&registry, EventKind::WorkerHang)
        .iter()
        .map(|e| e.kind())
        .collect();
    assert!(registry.snapshot().unwrap().workers[0].hung);
    w.ok("beat");
    registry.sweep(|e| seen.push(e.kind())).unwrap();
    assert_eq!(
        seen.iter().filter(|&&k| k == EventKind::WorkerHang).count(),
        1
    );
    assert_eq!(seen.last(), Some(&EventKind::WorkerRecover));
    assert!(!registry.snapshot().unwrap().workers[0].hung);
}

#[test]
fn journal_holds_every_event_in_order() {
    let scratch = Scratch::new();
    let registry = scratch.open();
    let mut seen = Vec::new();
    let g = registry
        .register_generation(&GenerationConfig::default(), |e| seen.push(*e))
        .unwrap();
    let mut w = Probe::spawn(&scratch.registry());
    w.worker(g, 0);
    w.ok("exit graceful");
    let journal = registry.events_since(0);
    let kinds: Vec<EventKind> = journal.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            EventKind::MasterStart,
            EventKind::WorkerStart,
            EventKind::WorkerExit,
            EventKind::MasterExit
        ]
    );
    assert_eq!(journal[0], seen[0]);
    assert!(journal.windows(2).all(|p| p[1].seq == p[0].seq + 1));
    assert!(matches!(
        journal[0].detail,
        Detail::MasterStart {
            kind: StartKind::Start,
            ..
        }
    ));
    assert!(matches!(
        journal[2].detail,
        Detail::WorkerExit {
            reason: ExitReason::Stop,
            ..
        }
    ));
    assert_eq!(registry.events_since(journal[2].seq).len(), 2);
}

#[test]
fn a_registry_from_an_earlier_boot_is_reset_and_its_processes_reported_gone() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g = master.generation();
    let mut w = Probe::spawn(&scratch.registry());
    w.worker(g, 0);
    master.kill9();
    w.kill9();
    // Another boot id, as if the machine had rebooted with the file kept.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(scratch.registry())
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xA5; 16], 56).unwrap();

    let registry = scratch.open();
    assert_eq!(registry.opened(), worker_manager::Opened::ResetAfterReboot);
    let mut events = Vec::new();
    let g2 = registry
        .register_generation(&GenerationConfig::default(), |e| events.push(*e))
        .unwrap();
    assert!(g2 > g);
    let crash = events
        .iter()
        .find(|e| e.kind() == EventKind::WorkerCrash)
        .unwrap();
    assert!(matches!(
        crash.detail,
        Detail::WorkerCrash {
            detection: worker_manager::Detection::Abandoned,
            ..
        }
    ));
    let start = events
        .iter()
        .find(|e| e.kind() == EventKind::MasterStart)
        .unwrap();
    assert!(matches!(
        start.detail,
        Detail::MasterStart {
            kind: StartKind::Restart,
            previous_run: Some(RunEnd::Unclean),
            ..
        }
    ));
    // A second opening in the same boot is an ordinary one.
    assert_eq!(scratch.open().opened(), worker_manager::Opened::Existing);
}

#[test]
fn callbacks_may_call_the_registry_and_a_panicking_callback_leaves_no_lock_held() {
    let scratch = Scratch::new();
    let registry = scratch.open();
    // Re-entrant: a callback reads a snapshot and runs code under the same lock.
    let mut inside = None;
    let g = registry
        .register_generation(&GenerationConfig::default(), |e| {
            let snapshot = registry.snapshot().unwrap();
            let nested = registry.with_lock(|| snapshot.generations.len()).unwrap();
            inside = Some((e.kind(), nested));
        })
        .unwrap();
    assert_eq!(inside, Some((EventKind::MasterStart, 1)));

    // A panic in a callback unwinds through the lock guard, which unlocks.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        registry
            .register_generation(&GenerationConfig::default(), |_| panic!("callback bug"))
            .unwrap();
    }));
    assert!(outcome.is_err());
    // Another process gets the lock at once (a 100 ms timeout would fail otherwise),
    // and the registration itself took effect: events are journalled before callbacks.
    let mut other = Probe::spawn_with_lock_timeout(&scratch.registry(), 100);
    other.ok("sweep");
    let journal = registry.events_since(0);
    let starts: Vec<u64> = journal
        .iter()
        .filter(|e| e.kind() == EventKind::MasterStart)
        .map(|e| e.generation)
        .collect();
    assert_eq!(starts.len(), 2);
    assert!(starts[1] > g);
}

#[test]
fn the_old_master_reloading_during_an_upgrade_is_a_reload() {
    let scratch = Scratch::new();
    let mut old_master = Probe::spawn(&scratch.registry());
    let g1 = old_master.generation();
    let mut old = Probe::spawn(&scratch.registry());
    old.worker(g1, 0);
    let (g2, _) = old_master.upgrade();
    let mut new = Probe::spawn(&scratch.registry());
    new.worker(g2, 0);
    let g3 = old_master.generation();
    assert!(g3 > g2);
    let start = old_master
        .events_of("master_start")
        .last()
        .unwrap()
        .to_string();
    assert!(start.contains("kind=reload"), "{start}");
    assert!(start.contains("n_prev=1 n_mine=0 n_next=nil"), "{start}");
}

#[test]
fn an_announced_exit_reports_at_shutdown_start_and_ends_the_generation_when_the_processes_are_gone()
{
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let mut old = scratch.workers(g1, 3);
    let g2 = master.generation();
    let mut new = scratch.workers(g2, 1);
    // Shutdown starts in every old worker: worker_exit at once, counting down.
    for (i, p) in old.iter_mut().enumerate() {
        p.ok("announce");
        let exit = p.events_of("worker_exit")[0];
        assert!(exit.contains("reason=reload"), "{exit}");
        assert!(
            exit.contains(&format!("n_mine={} n_next=1", 3 - i)),
            "{exit}"
        );
        assert!(
            p.events_of("master_exit").is_empty(),
            "the processes still run"
        );
    }
    let registry = scratch.open();
    assert_eq!(registry.snapshot().unwrap().live(g1), 0);
    // One finishes through the exit hook, one just ends (no hook): neither is a crash,
    // and neither is the last.
    old[0].ok("exit graceful");
    assert!(
        old[0].events_of("worker_exit").len() == 1 && old[0].events_of("master_exit").is_empty()
    );
    old[1].kill9();
    new[0].ok("sweep");
    assert!(
        new[0].events_of("worker_crash").is_empty(),
        "{:?}",
        new[0].events
    );
    assert!(new[0].events_of("master_exit").is_empty());
    // The last one's process ends: whoever sweeps next fires master_exit.
    old[2].kill9();
    new[0].ok("sweep");
    let exit = new[0].events_of("master_exit");
    assert_eq!(exit.len(), 1, "{:?}", new[0].events);
    assert!(exit[0].contains(&format!("id={g1} ")) && exit[0].contains("reason=reload"));
    assert!(new[0].events_of("worker_crash").is_empty());
    let crashes = registry
        .events_since(0)
        .iter()
        .filter(|e| e.kind() == EventKind::WorkerCrash)
        .count();
    assert_eq!(crashes, 0);
}
