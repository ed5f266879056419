//! The lifecycle rules with real processes: starts, reloads, upgrades, exits,
//! restarts, aborts, hangs.

mod common;

use std::time::Duration;

use common::json::reason;
use common::{counts, Probe, Scratch};
use worker_manager::{
    Detail, EventKind, ExitReason, GenerationConfig, Registry, RunEnd, StartKind, WorkerId,
};

fn kinds(registry: &Registry) -> Vec<EventKind> {
    registry.events_since(0).iter().map(|e| e.kind()).collect()
}

#[test]
fn start_workers_reload_and_graceful_stop() {
    let scratch = Scratch::new();
    let mut master = Probe::spawn(&scratch.registry());
    let g1 = master.generation();
    let [start] = master.events[..] else {
        panic!("not one event:\n{}", master.shown());
    };
    assert_eq!(start.generation, g1);
    assert!(
        matches!(
            start.detail,
            Detail::MasterStart {
                kind: StartKind::Start,
                previous_run: None,
                master_pid,
            } if master_pid == master.pid
        ),
        "{start}"
    );
    assert_eq!(start.counts, counts(None, 0, None), "{start}");

    let mut w: Vec<Probe> = (0..3).map(|_| Probe::spawn(&scratch.registry())).collect();
    for (i, p) in w.iter_mut().enumerate() {
        let index = i as u32;
        p.worker(g1, index);
        let start = p.one(EventKind::WorkerStart);
        let worker = WorkerId {
            generation: g1,
            pid: p.pid,
            index,
        };
        assert_eq!(
            start.detail,
            Detail::WorkerStart {
                worker,
                replaces: None
            },
            "{start}"
        );
        assert_eq!(start.counts, counts(None, index + 1, None), "{start}");
    }

    // Reload: the same master registers again; new workers start before old ones exit.
    let g2 = master.generation();
    assert!(g2 > g1);
    let reload = master.events_of(EventKind::MasterStart)[1];
    assert_eq!(reload.generation, g2);
    assert!(
        matches!(
            reload.detail,
            Detail::MasterStart {
                kind: StartKind::Reload,
                ..
            }
        ),
        "{reload}"
    );
    assert_eq!(reload.counts, counts(Some(3), 0, None), "{reload}");
    let mut n: Vec<Probe> = (0..2).map(|_| Probe::spawn(&scratch.registry())).collect();
    for (i, p) in n.iter_mut().enumerate() {
        p.worker(g2, i as u32);
        let start = p.one(EventKind::WorkerStart);
        assert_eq!(start.counts, counts(Some(3), i as u32 + 1, None), "{start}");
    }
    let snapshot = scratch.open().snapshot().unwrap();
    assert_eq!(snapshot.counts(g1), counts(None, 3, Some(2)));
    assert_eq!(snapshot.counts(g2), counts(Some(3), 2, None));
    for (i, p) in w.iter_mut().enumerate() {
        p.ok("exit graceful");
        let exit = p.one(EventKind::WorkerExit);
        assert_eq!(reason(exit), ExitReason::Reload, "{exit}");
        assert_eq!(exit.counts, counts(None, 3 - i as u32, Some(2)), "{exit}");
    }
    // The last old worker fired the old generation's master_exit.
    let last = w[2].one(EventKind::MasterExit);
    assert_eq!(last.generation, g1, "{last}");
    assert_eq!(reason(last), ExitReason::Reload, "{last}");
    assert_eq!(last.counts, counts(None, 0, Some(2)), "{last}");
    assert!(w[0].events_of(EventKind::MasterExit).is_empty());

    // Graceful stop: nothing replaces generation 2.
    for p in n.iter_mut() {
        p.ok("exit graceful");
        assert_eq!(reason(p.one(EventKind::WorkerExit)), ExitReason::Stop);
    }
    let stop = n[1].one(EventKind::MasterExit);
    assert_eq!(
        (stop.generation, reason(stop), stop.counts.next),
        (g2, ExitReason::Stop, None),
        "{stop}"
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
    let restart = again.one(EventKind::MasterStart);
    assert!(
        matches!(
            restart.detail,
            Detail::MasterStart {
                kind: StartKind::Restart,
                previous_run: Some(RunEnd::Clean),
                ..
            }
        ),
        "{restart}"
    );
    assert_eq!(restart.counts.prev, None, "{restart}");
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
        assert_eq!(reason(p.one(EventKind::WorkerExit)), ExitReason::FastStop);
    }
    assert_eq!(
        reason(w[1].one(EventKind::MasterExit)),
        ExitReason::FastStop
    );
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
    let mut crashed: Vec<u32> = next
        .events_of(EventKind::WorkerCrash)
        .iter()
        .filter_map(|e| e.worker())
        .map(|w| w.pid)
        .collect();
    crashed.sort_unstable();
    let mut killed: Vec<u32> = w.iter().map(|p| p.pid).collect();
    killed.sort_unstable();
    assert_eq!(crashed, killed, "{}", next.shown());
    let exit = next.one(EventKind::MasterExit);
    assert_eq!(
        (exit.generation, reason(exit), exit.counts.next),
        (g, ExitReason::Stop, None),
        "{exit}"
    );
    let start = next.one(EventKind::MasterStart);
    assert!(
        matches!(
            start.detail,
            Detail::MasterStart {
                kind: StartKind::Restart,
                previous_run: Some(RunEnd::Unclean),
                ..
            }
        ),
        "{start}"
    );
    assert_eq!(start.counts.prev, None, "{start}");
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
    let start = old_master.events_of(EventKind::MasterStart)[1];
    assert_eq!(start.generation, g2, "{start}");
    assert_eq!(
        start.detail,
        Detail::MasterStart {
            kind: StartKind::Upgrade,
            previous_run: None,
            master_pid: new_master
        },
        "{start}"
    );
    assert_eq!(start.counts, counts(Some(1), 0, None), "{start}");

    let mut new = Probe::spawn(&scratch.registry());
    new.worker(g2, 0);
    old.ok("exit graceful");
    assert_eq!(reason(old.one(EventKind::WorkerExit)), ExitReason::Upgrade);
    let exit = old.one(EventKind::MasterExit);
    assert_eq!(
        (reason(exit), exit.counts.next),
        (ExitReason::Upgrade, Some(1)),
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
    assert_eq!(reason(w.one(EventKind::WorkerExit)), ExitReason::Stop);

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
    // The only worker, hung, could not lead; recovered, it leads again.
    assert_eq!(
        seen[seen.len() - 2..],
        [EventKind::WorkerRecover, EventKind::LeaderElected]
    );
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
            EventKind::LeaderElected,
            EventKind::WorkerExit,
            EventKind::MasterExit,
            EventKind::LeaderElected,
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
        journal[3].detail,
        Detail::WorkerExit {
            reason: ExitReason::Stop,
            ..
        }
    ));
    assert_eq!(registry.events_since(journal[3].seq).len(), 3);
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
    // Its own two, and its child's (the upgrade).
    let [_, _, start] = old_master.events_of(EventKind::MasterStart)[..] else {
        panic!("not three master_start:\n{}", old_master.shown());
    };
    assert_eq!(start.generation, g3, "{start}");
    assert!(
        matches!(
            start.detail,
            Detail::MasterStart {
                kind: StartKind::Reload,
                ..
            }
        ),
        "{start}"
    );
    assert_eq!(start.counts, counts(Some(1), 0, None), "{start}");
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
        let exit = p.one(EventKind::WorkerExit);
        assert_eq!(reason(exit), ExitReason::Reload, "{exit}");
        assert_eq!(exit.counts, counts(None, 3 - i as u32, Some(1)), "{exit}");
        assert!(
            p.events_of(EventKind::MasterExit).is_empty(),
            "the processes still run"
        );
    }
    let registry = scratch.open();
    assert_eq!(registry.snapshot().unwrap().live(g1), 0);
    // One finishes through the exit hook, one just ends (no hook): neither is a crash,
    // and neither is the last.
    old[0].ok("exit graceful");
    assert_eq!(old[0].events_of(EventKind::WorkerExit).len(), 1);
    assert!(old[0].events_of(EventKind::MasterExit).is_empty());
    old[1].kill9();
    new[0].ok("sweep");
    assert!(
        new[0].events_of(EventKind::WorkerCrash).is_empty(),
        "{}",
        new[0].shown()
    );
    assert!(new[0].events_of(EventKind::MasterExit).is_empty());
    // The last one's process ends: whoever sweeps next fires master_exit.
    old[2].kill9();
    new[0].ok("sweep");
    let exit = new[0].one(EventKind::MasterExit);
    assert_eq!(
        (exit.generation, reason(exit)),
        (g1, ExitReason::Reload),
        "{exit}"
    );
    assert!(new[0].events_of(EventKind::WorkerCrash).is_empty());
    let crashes = registry
        .events_since(0)
        .iter()
        .filter(|e| e.kind() == EventKind::WorkerCrash)
        .count();
    assert_eq!(crashes, 0);
}
