//! The OpenResty binding in a real nginx (Debian's nginx and Lua module): every
//! lifecycle scenario, driven with real signals, asserting on the events that the
//! callbacks recorded. Serialized: one nginx at a time.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::counts;
use common::nginx::{
    alive, reap, serial, signal, slowdown, start, Config, Ev, Nginx, RemoveOnDrop,
};
use worker_manager::{
    AbortCause, Detail, Detection, EventKind, ExitReason, Observer, RunEnd, StartKind,
};

/// The worker a `worker_start` replaces, by pid.
fn replaced(e: &Ev) -> Option<u32> {
    match e.event().detail {
        Detail::WorkerStart { replaces, .. } => replaces.map(|dead| dead.pid),
        _ => None,
    }
}

/// Why a generation was aborted.
fn cause(e: &Ev) -> AbortCause {
    match e.event().detail {
        Detail::GenerationAbort { cause } => cause,
        _ => panic!("not a generation_abort: {}", e.event()),
    }
}

fn of_gen(events: &[Ev], kind: EventKind, generation: u64) -> Vec<Ev> {
    events
        .iter()
        .filter(|e| e.is(kind) && e.generation() == generation)
        .cloned()
        .collect()
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn quit(nginx: &Nginx, master: u32) {
    signal(master, libc::SIGQUIT);
    nginx.wait_gone(master);
}

#[test]
fn start_with_one_and_four_workers_then_graceful_quit() {
    let _serial = serial();
    for base in Config::both(|_| {}) {
        for (workers, daemon) in [(1, false), (4, true)] {
            let (nginx, master) = start(&Config {
                workers,
                daemon,
                ..base.clone()
            });
            let starts = nginx.wait_n(EventKind::WorkerStart, workers as usize);
            let ms = nginx.named(EventKind::MasterStart);
            assert_eq!(ms.len(), 1);
            assert_eq!(ms[0].started(), (StartKind::Start, None));
            assert_eq!(ms[0].event().counts, counts(None, 0, None));
            let mut mine: Vec<u32> = starts.iter().map(|e| e.event().counts.mine).collect();
            mine.sort_unstable();
            assert_eq!(mine, (1..=workers).collect::<Vec<_>>());
            // The workers that registered are the master's children, running as nobody.
            let registered: BTreeSet<u32> = starts.iter().map(|e| e.pid().unwrap()).collect();
            let real: BTreeSet<u32> = nginx.workers(master).into_iter().collect();
            assert_eq!(registered, real, "daemon {daemon}");
            for pid in &real {
                assert_eq!(uid_of(*pid), 65534, "workers run as nobody");
            }
            assert!(nginx
                .get("/status")
                .starts_with(&format!("live={workers} ")));

            quit(&nginx, master);
            let exits = nginx.named(EventKind::WorkerExit);
            assert_eq!(exits.len(), workers as usize, "{base:?}");
            assert!(exits.iter().all(|e| e.reason() == ExitReason::Stop));
            let me = nginx.named(EventKind::MasterExit);
            assert_eq!(me.len(), 1);
            assert_eq!(me[0].reason(), ExitReason::Stop);
            assert_eq!(me[0].event().counts.next, None);
            // Fired by the last worker, at its real exit.
            let last = exits.iter().max_by_key(|e| e.t).unwrap();
            assert_eq!(me[0].by, last.by);
        }
    }
}

#[test]
fn reloads_including_two_in_a_row_and_a_new_worker_count() {
    let _serial = serial();
    for mut config in Config::both(|_| {}) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        signal(master, libc::SIGHUP);
        let events = nginx.wait("the first generation's master_exit", |ev| {
            ev.iter().any(|e| e.is(EventKind::MasterExit))
        });
        let reload = &of_gen(&events, EventKind::MasterStart, 2)[0];
        assert_eq!(reload.started(), (StartKind::Reload, None));
        assert_eq!(reload.event().counts.prev, Some(2));
        let exit1 = &events.iter().find(|e| e.is(EventKind::MasterExit)).unwrap();
        assert_eq!(exit1.generation(), 1);
        assert_eq!(exit1.reason(), ExitReason::Reload);
        // The new workers that had registered by then: under memcheck, not always
        // both before the old ones are gone.
        let started = of_gen(&events, EventKind::WorkerStart, 2)
            .iter()
            .filter(|e| e.event().seq < exit1.event().seq)
            .count() as u32;
        assert_eq!(exit1.event().counts.next, Some(started));
        let old_exits = of_gen(&events, EventKind::WorkerExit, 1);
        assert!(old_exits.iter().all(|e| e.reason() == ExitReason::Reload));
        // The last old worker fires it at its real exit, whatever the interval.
        let last = old_exits.iter().max_by_key(|e| e.t).unwrap();
        assert_eq!(exit1.by, last.by, "{config:?}");
        let after = exit1.t - last.t;
        assert!(
            after < 1_000_000_000 * u64::from(slowdown()),
            "master_exit {after} ns after the last exit"
        );

        // Three workers now, and two reloads sent together (nginx may merge them).
        config.workers = 3;
        nginx.write_config(&config);
        signal(master, libc::SIGHUP);
        signal(master, libc::SIGHUP);
        let events = nginx.wait("three workers of the newest generation", |ev| {
            let newest = ev
                .iter()
                .filter(|e| e.is(EventKind::MasterStart))
                .map(Ev::generation)
                .max()
                .unwrap();
            let ended = ev
                .iter()
                .filter(|e| e.is(EventKind::MasterExit) || e.is(EventKind::GenerationAbort))
                .count() as u64;
            of_gen(ev, EventKind::WorkerStart, newest).len() == 3 && ended == newest - 1
        });
        let newest = events
            .iter()
            .filter(|e| e.is(EventKind::MasterStart))
            .map(Ev::generation)
            .max()
            .unwrap();
        for g in 1..newest {
            let exits = of_gen(&events, EventKind::MasterExit, g);
            let aborts = of_gen(&events, EventKind::GenerationAbort, g);
            assert_eq!(
                exits.len() + aborts.len(),
                1,
                "generation {g} ended exactly once"
            );
        }
        nginx.wait("only the three workers", |_| {
            nginx.workers(master).len() == 3
        });
        // Each reload got a verdict, committed but for those superseded.
        let s = Observer::open(nginx.registry()).unwrap().snapshot();
        let aborted = events
            .iter()
            .filter(|e| e.is(EventKind::GenerationAbort))
            .count() as u64;
        assert_eq!(
            (s.reload_verdicts, s.reload_failures),
            (newest - 1, aborted)
        );
        let committed = s.generations.iter().find(|g| g.id == newest).unwrap();
        assert_eq!(s.last_success, committed.committed);
        quit(&nginx, master);
    }
}

#[test]
fn a_reload_whose_workers_start_slowly_is_still_a_reload() {
    let _serial = serial();
    for mut config in Config::both(|_| {}) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        // The new workers register a second after nginx tells the old ones to quit
        // (as a heavy init_worker does): the old ones begin to exit first.
        config.before_worker = r#"
            local ffi = require("ffi")
            ffi.cdef("int poll(void *fds, unsigned long nfds, int timeout);")
            ffi.C.poll(nil, 0, 1000)
        "#
        .into();
        nginx.write_config(&config);
        signal(master, libc::SIGHUP);
        let events = nginx.wait("the old generation's end", |ev| {
            !of_gen(ev, EventKind::MasterExit, 1).is_empty()
                && of_gen(ev, EventKind::WorkerStart, 2).len() == 2
        });
        let exits = of_gen(&events, EventKind::WorkerExit, 1);
        assert_eq!(exits.len(), 2);
        assert!(
            exits.iter().all(|e| e.reason() == ExitReason::Reload),
            "{exits:?}"
        );
        let end = &of_gen(&events, EventKind::MasterExit, 1)[0];
        assert_eq!(end.reason(), ExitReason::Reload, "{config:?}");
        assert!(
            !nginx.stderr().contains("[worker-manager]"),
            "{}",
            nginx.stderr()
        );
        quit(&nginx, master);
    }
}

#[test]
fn kill_9_of_a_worker_is_one_crash_and_a_recognised_respawn() {
    let _serial = serial();
    for config in Config::both(|_| {}) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        let victim = nginx.workers(master)[0];
        signal(victim, libc::SIGKILL);
        let events = nginx.wait("the respawn", |ev| {
            ev.iter()
                .any(|e| e.is(EventKind::WorkerStart) && replaced(e).is_some())
        });
        let crashes = nginx.named(EventKind::WorkerCrash);
        assert_eq!(crashes.len(), 1);
        assert!(
            matches!(
                crashes[0].event().detail,
                Detail::WorkerCrash {
                    worker,
                    detection: Detection::OwnerDied,
                    held_lock: false,
                    ..
                } if worker.pid == victim
            ),
            "{}",
            crashes[0].event()
        );
        let respawns: Vec<u32> = events.iter().filter_map(replaced).collect();
        assert_eq!(respawns, [victim]);
        assert!(events
            .iter()
            .filter(|e| e.is(EventKind::WorkerStart))
            .all(|e| e.event().counts.mine <= 2));
        // Later ticks report nothing more.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(nginx.named(EventKind::WorkerCrash).len(), 1);
        assert!(nginx.named(EventKind::MasterExit).is_empty());
        quit(&nginx, master);
    }
}

#[test]
fn kill_9_then_an_immediate_reload_still_ends_the_old_generation() {
    let _serial = serial();
    for config in Config::both(|_| {}) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        let victim = nginx.workers(master)[0];
        signal(victim, libc::SIGKILL);
        signal(master, libc::SIGHUP);
        let events = nginx.wait("the old generation's master_exit", |ev| {
            !of_gen(ev, EventKind::MasterExit, 1).is_empty()
        });
        assert_eq!(of_gen(&events, EventKind::MasterExit, 1).len(), 1);
        assert_eq!(of_gen(&events, EventKind::WorkerCrash, 1).len(), 1);
        quit(&nginx, master);
    }
}

#[test]
fn fast_stop_is_reported_at_the_real_exit_with_or_without_the_exit_hook() {
    let _serial = serial();
    for config in Config::both(|_| {}) {
        let (mut nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        signal(master, libc::SIGTERM);
        nginx.wait_gone(master);
        let exits = nginx.named(EventKind::WorkerExit);
        assert_eq!(exits.len(), 2, "{config:?}");
        assert!(exits.iter().all(|e| e.reason() == ExitReason::FastStop));
        let me = nginx.named(EventKind::MasterExit);
        assert_eq!(me.len(), 1);
        assert_eq!(me[0].reason(), ExitReason::FastStop);
        assert_eq!(me[0].event().counts.next, None);
        // The run ended cleanly: the next start says so, and reports no crash.
        let master = nginx.start();
        let events = nginx.wait("the restart", |ev| {
            ev.iter().filter(|e| e.is(EventKind::WorkerStart)).count() == 4
        });
        let restart = &of_gen(&events, EventKind::MasterStart, 2)[0];
        assert_eq!(restart.started(), (StartKind::Restart, Some(RunEnd::Clean)));
        assert!(nginx.named(EventKind::WorkerCrash).is_empty());
        quit(&nginx, master);
    }
}

#[test]
fn binary_upgrade_continues_ids_and_the_old_generation_sees_the_new() {
    let _serial = serial();
    for config in Config::both(|c| c.daemon = true) {
        let (mut nginx, old) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        signal(old, libc::SIGUSR2);
        let new = nginx.wait_for_pid(Some(old));
        nginx.adopt(new);
        let events = nginx.wait("the new workers", |ev| {
            of_gen(ev, EventKind::WorkerStart, 2).len() == 2
        });
        let up = &of_gen(&events, EventKind::MasterStart, 2)[0];
        assert_eq!(
            up.event().detail,
            Detail::MasterStart {
                kind: StartKind::Upgrade,
                previous_run: None,
                master_pid: new
            }
        );
        assert_eq!(up.event().counts.prev, Some(2));
        signal(old, libc::SIGWINCH);
        let events = nginx.wait("the old generation's exit", |ev| {
            !of_gen(ev, EventKind::MasterExit, 1).is_empty()
        });
        let exit = &of_gen(&events, EventKind::MasterExit, 1)[0];
        assert_eq!(exit.reason(), ExitReason::Upgrade);
        assert_eq!(exit.event().counts.next, Some(2));
        assert!(of_gen(&events, EventKind::WorkerExit, 1)
            .iter()
            .all(|e| e.reason() == ExitReason::Upgrade));
        signal(old, libc::SIGQUIT);
        nginx.wait_gone(old);
        assert!(alive(new));
        quit(&nginx, new);
        let exit = &of_gen(&nginx.events(), EventKind::MasterExit, 2)[0];
        assert_eq!(exit.reason(), ExitReason::Stop);
    }
}

/// A reload nginx gives up after `init_by_lua` (a port it cannot bind): aborted at
/// once, in the master, when nginx closes the configuration.
#[test]
fn a_reload_that_fails_after_init_by_lua_is_aborted_and_the_old_workers_later_stop() {
    let _serial = serial();
    for mut config in Config::both(|_| {}) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        // The new configuration listens on a port that is taken.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.http = format!(
            "server {{ listen 127.0.0.1:{}; }}",
            taken.local_addr().unwrap().port()
        );
        nginx.write_config(&config);
        signal(master, libc::SIGHUP);
        // When nginx gave up, as the test saw it in the error log.
        let deadline = Instant::now() + common::STEP_TIMEOUT;
        let gave_up = loop {
            if nginx.stderr().contains("still could not bind()") {
                break SystemTime::now();
            }
            assert!(Instant::now() < deadline, "nginx never gave up");
            std::thread::sleep(Duration::from_millis(10));
        };
        let events = nginx.wait("the abort", |ev| {
            ev.iter().any(|e| e.is(EventKind::GenerationAbort))
        });
        let abort = events
            .iter()
            .find(|e| e.is(EventKind::GenerationAbort))
            .unwrap();
        assert_eq!(abort.generation(), 2);
        assert_eq!(
            abort.event().detail,
            Detail::GenerationAbort {
                cause: AbortCause::Failed
            }
        );
        assert_eq!(abort.by, master, "the master aborts it");
        let at = UNIX_EPOCH + Duration::from_nanos(abort.t);
        assert!(
            at < gave_up + Duration::from_secs(1) * slowdown(),
            "aborted {:?} after nginx gave up",
            at.duration_since(gave_up)
        );
        assert!(of_gen(&events, EventKind::WorkerStart, 2).is_empty());
        assert!(nginx.get("/status").starts_with("live=2 "), "still serving");
        // The verdict is counted, and the last success is still the start's.
        let s = Observer::open(nginx.registry()).unwrap().snapshot();
        assert_eq!((s.reload_verdicts, s.reload_failures), (1, 1));
        assert!(s.verdict.is_some_and(|v| v.generation == 2 && !v.committed));
        let started = s.generations.iter().find(|g| g.id == 1).unwrap();
        assert_eq!(s.last_success, started.committed);
        quit(&nginx, master);
        let exits = of_gen(&nginx.events(), EventKind::WorkerExit, 1);
        assert_eq!(exits.len(), 2);
        assert!(
            exits.iter().all(|e| e.reason() == ExitReason::Stop),
            "{exits:?}"
        );
        assert!(
            exits.iter().all(|e| e.event().counts.next.is_none()),
            "a failed reload is no successor: {exits:?}"
        );
    }
}

/// A reload whose `init_by_lua` raises after `on_init_by_lua` returned: nginx gives
/// the configuration up, and it is aborted at once.
#[test]
fn a_reload_whose_init_by_lua_raises_after_registering_is_aborted() {
    let _serial = serial();
    for config in Config::both(|_| {}) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        let conf = nginx.prefix().join("conf/nginx.conf");
        nginx.write_config(&config);
        // The error comes after the registration, at the end of init_by_lua.
        let text = std::fs::read_to_string(&conf).unwrap().replacen(
            "WM_RECORD(\"master_exit\")))",
            "WM_RECORD(\"master_exit\")))\n        error(\"a later error\")",
            1,
        );
        std::fs::write(&conf, text).unwrap();
        signal(master, libc::SIGHUP);
        let events = nginx.wait("the abort", |ev| {
            ev.iter().any(|e| e.is(EventKind::GenerationAbort))
        });
        let abort = events
            .iter()
            .find(|e| e.is(EventKind::GenerationAbort))
            .unwrap();
        assert_eq!((abort.generation(), cause(abort)), (2, AbortCause::Failed));
        assert!(nginx.stderr().contains("a later error"));
        assert!(nginx.get("/status").starts_with("live=2 "), "still serving");
        quit(&nginx, master);
        let end = &of_gen(&nginx.events(), EventKind::MasterExit, 1)[0];
        assert_eq!(
            (end.reason(), end.event().counts.next),
            (ExitReason::Stop, None)
        );
    }
}

#[test]
fn restart_after_a_clean_stop_and_after_kill_9_of_everything() {
    let _serial = serial();
    for config in Config::both(|_| {}) {
        let (mut nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        quit(&nginx, master);
        let master = nginx.start();
        let events = nginx.wait("the clean restart", |ev| {
            of_gen(ev, EventKind::WorkerStart, 2).len() == 2
        });
        let restart = &of_gen(&events, EventKind::MasterStart, 2)[0];
        assert_eq!(restart.started(), (StartKind::Restart, Some(RunEnd::Clean)));
        assert_eq!(restart.event().counts.prev, None);

        let workers = nginx.workers(master);
        signal(master, libc::SIGKILL);
        for w in &workers {
            signal(*w, libc::SIGKILL);
        }
        nginx.wait_gone(master);
        while workers.iter().any(|&w| alive(w)) {
            reap();
            std::thread::yield_now();
        }
        let master = nginx.start();
        let events = nginx.wait("the unclean restart", |ev| {
            of_gen(ev, EventKind::WorkerStart, 3).len() == 2
        });
        let restart = &of_gen(&events, EventKind::MasterStart, 3)[0];
        assert_eq!(
            restart.started(),
            (StartKind::Restart, Some(RunEnd::Unclean))
        );
        let mut crashed: Vec<u32> = of_gen(&events, EventKind::WorkerCrash, 2)
            .iter()
            .filter_map(Ev::pid)
            .collect();
        crashed.sort_unstable();
        let mut killed = workers.clone();
        killed.sort_unstable();
        assert_eq!(crashed, killed);
        assert_eq!(of_gen(&events, EventKind::MasterExit, 2).len(), 1);
        quit(&nginx, master);
    }
}

/// `kill -9` of the master alone: its workers serve on as orphans, a live
/// generation; a start meanwhile fails to bind and is aborted; when the orphans end,
/// nothing replaces them; the next start says the run ended uncleanly, and a clean
/// stop after it is clean.
#[test]
fn the_master_killed_alone_leaves_orphans_that_are_tracked_to_their_end() {
    let _serial = serial();
    for config in Config::both(|_| {}) {
        let (mut nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        let orphans = nginx.workers(master);
        for &w in &orphans {
            // Killed on drop with the masters, however the test ends.
            nginx.adopt(w);
        }
        signal(master, libc::SIGKILL);
        nginx.wait_gone(master);
        assert!(orphans.iter().all(|&w| alive(w)));
        assert!(
            nginx.get("/status").starts_with("live=2 "),
            "the orphans serve"
        );

        // A start while they hold the port: nginx gives it up after init_by_lua.
        let _ = std::fs::remove_file(nginx.prefix().join("logs/nginx.pid"));
        let failed = std::process::Command::new(common::nginx::NGINX)
            .args([
                "-p",
                nginx.prefix().to_str().unwrap(),
                "-c",
                "conf/nginx.conf",
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!failed.success(), "the start could not bind");
        let events = nginx.wait("the failed start's abort", |ev| {
            ev.iter().any(|e| e.is(EventKind::GenerationAbort))
        });
        let abort = events
            .iter()
            .find(|e| e.is(EventKind::GenerationAbort))
            .unwrap();
        assert_eq!((abort.generation(), cause(abort)), (2, AbortCause::Failed));
        assert!(nginx.get("/status").starts_with("live=2 "));

        // The orphans are stopped.
        for &w in &orphans {
            signal(w, libc::SIGTERM);
        }
        let events = nginx.wait("the orphans' end", |ev| {
            !of_gen(ev, EventKind::MasterExit, 1).is_empty()
        });
        let exits = of_gen(&events, EventKind::WorkerExit, 1);
        assert_eq!(exits.len(), 2, "{events:?}");
        assert!(
            exits.iter().all(|e| e.event().counts.next.is_none()),
            "{exits:?}"
        );
        assert_eq!(
            of_gen(&events, EventKind::MasterExit, 1)[0]
                .event()
                .counts
                .next,
            None
        );
        while orphans.iter().any(|&w| alive(w)) {
            reap();
            std::thread::yield_now();
        }

        let master = nginx.start();
        let events = nginx.wait("the next start", |ev| {
            of_gen(ev, EventKind::WorkerStart, 3).len() == 2
        });
        let restart = &of_gen(&events, EventKind::MasterStart, 3)[0];
        assert_eq!(
            restart.started(),
            (StartKind::Restart, Some(RunEnd::Unclean)),
            "the master was killed"
        );
        quit(&nginx, master);
        let master = nginx.start();
        let events = nginx.wait("the start after a clean stop", |ev| {
            of_gen(ev, EventKind::WorkerStart, 4).len() == 2
        });
        let restart = &of_gen(&events, EventKind::MasterStart, 4)[0];
        assert_eq!(restart.started().1, Some(RunEnd::Clean));
        quit(&nginx, master);
    }
}

/// A library call made under the lock that raises a Lua error (as the FFI does for a
/// bad argument) is reported as a failure, and the lock is released all the same.
#[test]
fn a_library_call_that_raises_under_the_lock_leaves_no_lock_held() {
    let _serial = serial();
    let mut nginx = Nginx::new();
    // Worker 1's registration raises inside the library call.
    let lua = format!(
        r#"
    init_by_lua_block {{
        {record}
        local cdefs = require("resty.worker.manager.cdefs")
        local load = cdefs.load
        cdefs.load = function(path)
            local lib, err = load(path)
            if not lib then return nil, err end
            return setmetatable({{}}, {{ __index = function(_, name)
                if name == "wm_register_worker" and ngx.worker.id() == 1 then
                    return function() error("bad argument #3 to 'wm_register_worker'") end
                end
                return lib[name]
            end }})
        end
        assert(require("resty.worker.manager").on_init_by_lua({{
            path = "{registry}", lock_timeout = 2,
        }}, WM_RECORD("master_start"), WM_RECORD("master_exit")))
    }}
    init_worker_by_lua_block {{
        local ok, err = require("resty.worker.manager").on_init_worker_by_lua(
            WM_RECORD("worker_start"), WM_RECORD("worker_exit"))
        ngx.log(ngx.NOTICE, "REGISTERED ", tostring(ok), " ", tostring(err))
    }}
"#,
        record = nginx.record_lua(""),
        registry = nginx.registry().display(),
    );
    nginx.write_config(&Config {
        lua_blocks: Some(lua),
        ..Config::default()
    });
    let master = nginx.start();
    nginx.wait("both registrations", |_| {
        nginx.stderr().matches("REGISTERED ").count() == 2
    });
    let log = nginx.stderr();
    assert!(log.contains("REGISTERED nil "), "{log}");
    assert!(
        log.contains("bad argument #3 to 'wm_register_worker'"),
        "{log}"
    );
    // The lock was released: the next configuration's worker 0 registers in time.
    signal(master, libc::SIGHUP);
    let events = nginx.wait("the reload's worker", |ev| {
        !of_gen(ev, EventKind::WorkerStart, 2).is_empty()
    });
    assert_eq!(of_gen(&events, EventKind::WorkerStart, 2).len(), 1);
    assert!(
        !nginx.stderr().contains("lock not acquired"),
        "{}",
        nginx.stderr()
    );
    quit(&nginx, master);
}

#[test]
fn a_throwing_callback_is_logged_and_leaves_no_lock_held() {
    let _serial = serial();
    let (nginx, master) = start(&Config {
        in_callback: r#"if name == "worker_start" then error("boom in " .. name) end"#.into(),
        ..Config::default()
    });
    nginx.wait_n(EventKind::WorkerStart, 2);
    nginx.wait("the logged error", |_| {
        nginx
            .stderr()
            .matches("the worker_start callback failed")
            .count()
            == 2
    });
    let log = nginx.stderr();
    assert!(log.contains("boom in worker_start"));
    assert!(log.contains("stack traceback"), "logged with its traceback");
    // The lock is free: a reload goes through.
    signal(master, libc::SIGHUP);
    nginx.wait("the reload", |ev| {
        !of_gen(ev, EventKind::MasterExit, 1).is_empty()
    });
    quit(&nginx, master);
}

/// A callback that yields (here `ngx.sleep` in a crash callback run by a worker's
/// tick) keeps the registry lock; the same worker's next ticks, which the lock's
/// re-entrancy would let in, wait for it instead: the callbacks of two crashes never
/// run at the same time.
#[test]
fn a_callback_that_yields_keeps_its_worker_s_other_threads_out_of_the_lock() {
    let _serial = serial();
    let (nginx, master) = start(&Config {
        workers: 3,
        in_callback: r#"if name == "worker_crash" then
                ngx.sleep(1)
                WM_RECORD("crash_done")(id, n_prev, n_mine, n_next, info)
            end"#
            .into(),
        ..Config::default()
    });
    nginx.wait_n(EventKind::WorkerStart, 3);
    // No respawns: the deaths are found by the survivors' ticks.
    signal(master, libc::SIGSTOP);
    let workers = nginx.workers(master);
    signal(workers[0], libc::SIGKILL);
    let first = nginx.wait_n(EventKind::WorkerCrash, 1)[0].clone();
    let detector = first.by;
    let second = *workers
        .iter()
        .find(|&&w| w != workers[0] && w != detector)
        .unwrap();
    signal(second, libc::SIGKILL);
    let events = nginx.wait("both crashes handled", |ev| {
        ev.iter().filter(|e| e.name == "crash_done").count() == 2
    });
    signal(master, libc::SIGCONT);
    let done = |pid: u32| {
        events
            .iter()
            .find(|e| e.name == "crash_done" && e.pid() == Some(pid))
            .unwrap()
            .t
    };
    let started = events
        .iter()
        .find(|e| e.is(EventKind::WorkerCrash) && e.pid() == Some(second))
        .unwrap()
        .t;
    assert!(
        started >= done(workers[0]),
        "the second crash's callback ran while the first one's slept"
    );
    assert!(
        !nginx.stderr().contains("callback failed"),
        "{}",
        nginx.stderr()
    );
    nginx.wait_status("live=3 ");
    quit(&nginx, master);
}

/// `status()` reads the registry without the lock: a status page answers at once
/// while a callback of another worker holds the lock for seconds.
#[test]
fn status_answers_at_once_while_a_callback_holds_the_lock() {
    let _serial = serial();
    let (nginx, master) = start(&Config {
        // The respawn's worker_start callback holds the lock for 5 s, inside its
        // init_worker: the other worker serves the requests meanwhile.
        in_callback: r#"if name == "worker_start" and info.respawn then
                os.execute("sleep 5")
            end"#
            .into(),
        ..Config::default()
    });
    nginx.wait_n(EventKind::WorkerStart, 2);
    let observer = Observer::open(nginx.registry()).unwrap();
    signal(nginx.workers(master)[1], libc::SIGKILL);
    let deadline = Instant::now() + common::STEP_TIMEOUT;
    loop {
        let held = observer.snapshot().lock.map(|l| l.held_for);
        if held > Some(Duration::from_millis(500)) {
            break;
        }
        assert!(Instant::now() < deadline, "the lock was never held");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let body = nginx.get("/status");
    let took = started.elapsed();
    assert!(body.starts_with("live="), "{body}");
    assert!(took < Duration::from_secs(1), "status took {took:?}");
    assert!(
        observer.snapshot().lock.is_some(),
        "the callback still held the lock when status answered"
    );
    nginx.wait_n(EventKind::WorkerStart, 3);
    nginx.wait_status("live=2 ");
    quit(&nginx, master);
}

#[test]
fn a_callback_holding_the_lock_past_lock_timeout_fails_the_waiter_cleanly() {
    let _serial = serial();
    let (nginx, master) = start(&Config {
        opts: "lock_timeout = 0.3,".into(),
        // The first worker to start holds the lock for 1.5 s in its callback.
        in_callback: r#"if name == "worker_start" and n_mine == 1 then
                local t = ngx.now() + 1.5
                repeat ngx.update_time() until ngx.now() >= t
            end"#
            .into(),
        ..Config::default()
    });
    nginx.wait("the lock timeout", |_| {
        nginx
            .stderr()
            .contains("registry lock not acquired within 300ms")
    });
    let log = nginx.stderr();
    assert!(
        log.contains("for register_worker") || log.contains("for user"),
        "the holder is named"
    );
    nginx.wait_n(EventKind::WorkerStart, 1);
    // While the lock is held, requests are still served, and status() answers
    // without waiting for the lock.
    let during = nginx.get("/status");
    assert!(during.starts_with("live=1 "), "{during}");
    // Once the callback returns, everything works again.
    nginx.wait_status("live=1 ");
    quit(&nginx, master);
}

#[test]
fn the_original_synopsis_configuration_runs_unchanged() {
    let _serial = serial();
    let synopsis = r#"
    lua_shared_dict my_shm 5m;
    init_by_lua_block {
        require("resty.worker.manager").on_init_by_lua({
                shm = "my_shm",
                interval = 10,  -- worker heartbeat interval in seconds
                failed = 5, -- max heartbeat overrun to detect crashed worker, in seconds
            },
            function(master_id, n_prev, n_mine, n_next)
                ngx.log(ngx.ERR, "======== Master start ======== ", master_id, " ", tostring(n_prev))
            end,
            function(master_id, n_prev, n_mine, n_next)
                ngx.log(ngx.ERR, "======== Master exit ======== ", master_id, " ", tostring(n_next))
            end)
    }
    init_worker_by_lua_block {
        require("resty.worker.manager").on_init_worker_by_lua(
            function(worker_id, n_prev, n_mine, n_next)
                ngx.log(ngx.ERR, "-------- Worker start -------- ", worker_id, " ", n_mine)
            end,
            function(worker_id, n_prev, n_mine, n_next)
                ngx.log(ngx.ERR, "-------- Worker exit -------- ", worker_id, " ", tostring(n_next))
            end)
    }
"#;
    let (nginx, master) = start(&Config {
        lua_blocks: Some(synopsis.into()),
        exit_hook: false,
        ..Config::default()
    });
    // The registry is the default one, derived from the prefix and the shm name;
    // removed however the test ends.
    let prefix = format!("{}/", nginx.prefix().display());
    let registry = worker_manager::naming::default_path(&prefix, "my_shm", "http");
    let _remove = RemoveOnDrop(registry.clone());
    nginx.wait("two worker starts", |_| {
        nginx.stderr().matches("Worker start").count() == 2
    });
    signal(master, libc::SIGHUP);
    nginx.wait("the reload", |_| {
        nginx.stderr().contains("Master exit ======== 1 2")
    });
    quit(&nginx, master);
    let log = nginx.stderr();
    assert!(log.contains("Master start ======== 1 nil"));
    assert!(log.contains("Master start ======== 2 2"));
    assert!(
        log.contains("Master exit ======== 2 nil"),
        "the node stopped"
    );
    assert_eq!(log.matches("Worker exit").count(), 4);
    assert!(registry.exists(), "{}", registry.display());
}

#[test]
fn misuse_and_bad_options_raise_errors_naming_the_cause_and_runtime_failures_return_them() {
    let _serial = serial();
    let mut nginx = Nginx::new();
    let registry = nginx.registry();
    let lua = format!(
        r#"
    init_by_lua_block {{
        local wm = require("resty.worker.manager")
        local P = "{registry}"
        local function try(label, f, ...)
            local ok, a, b = pcall(f, ...)
            ngx.log(ngx.ERR, "TRY ", label, ": ", tostring(ok), " ", tostring(a), " ", tostring(b))
        end
        local init = wm.on_init_by_lua
        try("unknown", init, {{ path = P, bogus = 1 }})
        try("type", init, {{ path = P, interval = "10" }})
        try("range", init, {{ path = P, failed = -1 }})
        try("noname", init, {{ interval = 1 }})
        try("callback", init, {{ path = P }}, 42)
        try("notable", init, "opts")
        try("lib", init, {{ path = P, lib = "/nonexistent/libx.so" }})
        local cpath = package.cpath
        package.cpath = "/nonexistent/?.so"
        try("cpath", init, {{ path = P }})
        package.cpath = cpath
        try("baddir", init, {{ path = "/nonexistent-dir/registry.wm" }})
        try("phase", wm.on_init_worker_by_lua)
        assert(init({{ path = P }}))
        try("twice", init, {{ path = P }})
    }}
    init_worker_by_lua_block {{
        local wm = require("resty.worker.manager")
        assert(wm.on_init_worker_by_lua())
        local ok, err = pcall(wm.on_init_worker_by_lua)
        ngx.log(ngx.ERR, "TRY worker_twice: ", tostring(ok), " ", tostring(err))
    }}
"#,
        registry = registry.display()
    );
    nginx.write_config(&Config {
        lua_blocks: Some(lua),
        workers: 1,
        ..Config::default()
    });
    let master = nginx.start();
    nginx.wait("the worker's checks", |_| {
        nginx.stderr().contains("TRY worker_twice")
    });
    let log = nginx.stderr();
    let line = |label: &str| -> String {
        log.lines()
            .find(|l| l.contains(&format!("TRY {label}: ")))
            .unwrap_or_else(|| panic!("no TRY {label} in:\n{log}"))
            .to_string()
    };
    // Misuse raises an error naming the option.
    assert!(
        line("unknown").contains("false") && line("unknown").contains("unknown option 'bogus'")
    );
    assert!(line("type").contains("option 'interval' must be a number, got string"));
    assert!(line("range").contains("option 'failed' must be between"));
    assert!(line("noname").contains("option 'shm' or 'path' is required"));
    assert!(line("callback").contains("master_start_cb must be a function or nil, got number"));
    assert!(line("notable").contains("opts must be a table, got string"));
    assert!(line("phase").contains("must be called in init_worker_by_lua, not in init"));
    assert!(line("twice").contains("on_init_by_lua was already called"));
    assert!(line("worker_twice").contains("on_init_worker_by_lua was already called"));
    // Runtime failures return nil and an error naming the cause.
    assert!(
        line("lib").contains("true nil cannot load /nonexistent/libx.so"),
        "{}",
        line("lib")
    );
    assert!(
        line("cpath").contains(
            "libworker_manager_ffi.so not found; looked in: /nonexistent/libworker_manager_ffi.so"
        ),
        "{}",
        line("cpath")
    );
    assert!(line("baddir").contains("true nil registry /nonexistent-dir/registry.wm: open failed"));
    // And nginx serves, with the registry working.
    nginx.wait_status("live=1 ");
    quit(&nginx, master);
}

/// The `exit_hook` option of earlier versions is accepted and changes nothing:
/// exits are reported at the real exit, once, with the hook wired or not.
#[test]
fn the_exit_hook_option_is_accepted_and_exits_are_reported_once() {
    let _serial = serial();
    for (hook, option) in [(false, true), (true, false)] {
        let (nginx, master) = start(&Config {
            exit_hook: hook,
            opts: format!("exit_hook = {option},"),
            ..Config::default()
        });
        nginx.wait_n(EventKind::WorkerStart, 2);
        signal(master, libc::SIGHUP);
        let events = nginx.wait("the old generation's end", |ev| {
            !of_gen(ev, EventKind::MasterExit, 1).is_empty()
        });
        let exits = of_gen(&events, EventKind::WorkerExit, 1);
        assert_eq!(exits.len(), 2);
        assert!(exits.iter().all(|e| e.reason() == ExitReason::Reload));
        quit(&nginx, master);
        let events = nginx.events();
        let exits = of_gen(&events, EventKind::WorkerExit, 2);
        assert_eq!(exits.len(), 2, "once each: {exits:?}");
        assert!(exits.iter().all(|e| e.reason() == ExitReason::Stop));
        assert_eq!(of_gen(&events, EventKind::MasterExit, 2).len(), 1);
    }
}

/// Callbacks run at a worker's real exit, from the end of its Lua VM, after timers
/// and requests have run: nginx's API answers there (ngx.log writes, get_phase says
/// "init", worker.id and worker.exiting are the worker's), an error is logged with
/// its traceback, and a callback that tries to yield is refused and logged; nothing
/// crashes.
#[test]
fn callbacks_at_the_real_exit_can_use_nginx_s_api() {
    let _serial = serial();
    let (nginx, master) = start(&Config {
        before_worker: r#"ngx.timer.at(0, function() end)"#.into(),
        in_callback: r#"
            if name == "worker_exit" or name == "master_exit" then
                ngx.log(ngx.NOTICE, "AT EXIT ", name, " phase=", ngx.get_phase(),
                        " id=", tostring(ngx.worker.id()),
                        " exiting=", tostring(ngx.worker.exiting()))
                if name == "worker_exit" and ngx.worker.id() == 0 then
                    error("boom at exit")
                elseif name == "worker_exit" then
                    coroutine.yield()
                end
            end"#
            .into(),
        ..Config::synopsis()
    });
    nginx.wait_n(EventKind::WorkerStart, 2);
    for _ in 0..4 {
        assert!(nginx.get("/status").starts_with("live=2 "));
    }
    std::thread::sleep(Duration::from_millis(100));
    quit(&nginx, master);
    let log = nginx.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("AT EXIT ")).collect();
    assert_eq!(lines.len(), 3, "two worker_exit, one master_exit:\n{log}");
    assert!(lines
        .iter()
        .all(|l| l.contains("phase=init") && l.contains("exiting=true")));
    assert!(lines
        .iter()
        .any(|l| l.contains("worker_exit phase=init id=0 ")));
    assert!(lines
        .iter()
        .any(|l| l.contains("worker_exit phase=init id=1 ")));
    assert!(log.contains("the worker_exit callback failed") && log.contains("boom at exit"));
    assert!(log.contains("stack traceback"));
    assert!(log.contains("attempt to yield"), "{log}");
    assert!(!log.contains("signal 11"), "{log}");
    assert!(!log.contains("exited on signal"), "{log}");
    assert_eq!(nginx.named(EventKind::MasterExit).len(), 1);
}

#[test]
fn the_heartbeat_and_is_leader_paths_are_jit_compiled() {
    let _serial = serial();
    let mut nginx = Nginx::new();
    let jit_log = nginx.prefix().join("jit.log");
    std::fs::write(&jit_log, "").unwrap();
    std::fs::set_permissions(
        &jit_log,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    nginx.write_config(&Config {
        workers: 1,
        http: format!(
            r#"server {{
                listen unix:{prefix}/jit.sock;
                location / {{
                    content_by_lua_block {{
                        local wm = require("resty.worker.manager")
                        local v = require("jit.v")
                        v.on("{log}")
                        local beats, leads = 0, 0
                        for _ = 1, 5000 do
                            if wm.heartbeat() then beats = beats + 1 end
                            if wm.is_leader() then leads = leads + 1 end
                        end
                        v.off()
                        ngx.say(beats, " ", leads)
                    }}
                }}
            }}"#,
            prefix = nginx.prefix().display(),
            log = jit_log.display()
        ),
        ..Config::default()
    });
    let master = nginx.start();
    nginx.wait_n(EventKind::WorkerStart, 1);
    let body = {
        use std::io::{Read, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(nginx.prefix().join("jit.sock")).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    };
    // The only worker leads.
    assert_eq!(body.trim(), "5000 5000");
    let traces = std::fs::read_to_string(&jit_log).unwrap();
    // A trace was recorded for the loop, and nothing aborted on the way.
    assert!(traces.contains("[TRACE"), "no trace recorded: {traces}");
    assert!(!traces.contains("---"), "a trace aborted: {traces}");
    quit(&nginx, master);
}

/// A worker killed again and again: a crash loop, reported once to its callback,
/// in `status()`, in the metrics and by the observer, then its end once the index
/// has been quiet for the period (seen at the next tick: at most `interval` later).
#[test]
fn a_worker_killed_again_and_again_is_a_crash_loop_then_its_end() {
    let _serial = serial();
    for config in Config::both(|c| {
        c.workers = 1;
        c.opts = "crash_loop_intensity = 2, crash_loop_period = 3,".into();
        c.locations = r#"
            location = /loops {
                content_by_lua_block {
                    local st = require("resty.worker.manager").status()
                    ngx.print(#st.crash_loops, " ", st.crash_loops[1] and st.crash_loops[1].index or "-")
                }
            }"#
        .into();
    }) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 1);
        for kill in 1..=3 {
            let victim = nginx.workers(master)[0];
            signal(victim, libc::SIGKILL);
            nginx.wait(&format!("respawn {kill}"), |ev| {
                ev.iter().filter(|e| replaced(e).is_some()).count() >= kill
            });
        }
        let loops = nginx.wait_n(EventKind::WorkerCrashLoop, 1);
        assert_eq!(loops.len(), 1);
        assert!(
            matches!(
                loops[0].event().detail,
                Detail::WorkerCrashLoop { worker, crashes: 3, period } if worker.index == 0 && period == Duration::from_secs(3)
            ),
            "{}",
            loops[0].event()
        );
        let snapshot = Observer::open(nginx.registry()).unwrap().snapshot();
        assert_eq!(
            snapshot
                .crash_loops
                .iter()
                .map(|l| l.index)
                .collect::<Vec<_>>(),
            [0]
        );
        assert!(
            nginx
                .get("/metrics")
                .contains("\nworker_manager_workers_crash_looping 1\n"),
            "{}",
            nginx.get("/metrics")
        );
        assert_eq!(nginx.get("/loops"), "1 0");
        let ends = nginx.wait_n(EventKind::WorkerCrashLoopEnd, 1);
        assert!(
            matches!(ends[0].event().detail, Detail::WorkerCrashLoopEnd { worker, lasted } if worker.index == 0 && lasted >= Duration::from_secs(3)),
            "{}",
            ends[0].event()
        );
        assert!(nginx
            .get("/metrics")
            .contains("\nworker_manager_workers_crash_looping 0\n"));
        assert_eq!(nginx.get("/loops"), "0 -");
        assert_eq!(nginx.named(EventKind::WorkerCrashLoop).len(), 1);
        quit(&nginx, master);
    }
}

/// A request that outlives a reload keeps its old worker: the oldest draining
/// generation's age shows it, in the snapshot and the metrics, until that worker
/// is gone.
#[test]
fn an_old_worker_kept_by_a_long_request_is_a_draining_generation() {
    let _serial = serial();
    // The request ends when the test creates this file (readable by nginx's
    // unprivileged workers), or after a minute.
    let release =
        RemoveOnDrop(std::env::temp_dir().join(format!("wm-release-{}", std::process::id())));
    for config in Config::both(|c| {
        c.workers = 1;
        c.locations = format!(
            r#"
            location = /slow {{
                content_by_lua_block {{
                    ngx.log(ngx.WARN, "the slow request started")
                    for _ = 1, 1200 do
                        local f = io.open("{}")
                        if f then f:close() break end
                        ngx.sleep(0.05)
                    end
                    ngx.say("done")
                }}
            }}"#,
            release.0.display()
        );
    }) {
        let _ = std::fs::remove_file(&release.0);
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 1);
        let port = nginx.port;
        let slow = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET /slow HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
            let mut response = String::new();
            s.read_to_string(&mut response).unwrap();
            response
        });
        nginx.wait("the slow request", |_| {
            nginx.stderr().contains("the slow request started")
        });
        signal(master, libc::SIGHUP);
        nginx.wait("the new worker", |ev| {
            !of_gen(ev, EventKind::WorkerStart, 2).is_empty()
        });
        let observer = Observer::open(nginx.registry()).unwrap();
        let s = observer.snapshot();
        assert!(
            of_gen(&nginx.events(), EventKind::MasterExit, 1).is_empty(),
            "the old worker is still serving"
        );
        let draining = s.oldest_draining(SystemTime::now());
        assert!(
            draining.is_some_and(|d| d < common::STEP_TIMEOUT),
            "{draining:?}"
        );
        let metric = |text: &str| -> f64 {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("worker_manager_oldest_draining_generation_age_seconds ")
                })
                .unwrap()
                .parse()
                .unwrap()
        };
        let text = worker_manager::exposition::prometheus(&s, observer.path());
        assert!(metric(&text) > 0.0, "{text}");
        std::fs::write(&release.0, "").unwrap();
        assert!(slow.join().unwrap().contains("done"));
        nginx.wait_n(EventKind::MasterExit, 1);
        let s = observer.snapshot();
        assert_eq!(s.oldest_draining(SystemTime::now()), None);
        let text = worker_manager::exposition::prometheus(&s, observer.path());
        assert_eq!(metric(&text), 0.0);
        quit(&nginx, master);
    }
}
