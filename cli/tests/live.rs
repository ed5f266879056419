//! The CLI against a real nginx (Debian's, with the real Lua module): status
//! matches the real worker processes through start, reload and kill -9; `events
//! --follow` streams a reload as it happens; `metrics` from the CLI and from Lua
//! parse as Prometheus exposition and agree; a callback holding the lock for
//! seconds never holds up the CLI. Serialized: one nginx at a time.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::nginx::{serial, signal, start, Config, Ev, Nginx, RemoveOnDrop};
use common::{cli, cli_on, parse_exposition, sample, STEP_TIMEOUT};
use serde_json::Value;
use worker_manager::{naming, EventKind};

fn status(path: &Path) -> Value {
    let run = cli_on("status", path, &["--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

fn of_gen(events: &[Ev], kind: EventKind, generation: u64) -> usize {
    events
        .iter()
        .filter(|e| e.is(kind) && e.generation() == generation)
        .count()
}

/// The pids of the workers the registry says are running, for one generation.
fn running(status: &Value, generation: u64) -> BTreeSet<u32> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["generation"] == generation && w["state"] == "running")
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect()
}

fn generation(status: &Value, id: u64) -> Value {
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no generation {id} in {status:#}"))
}

/// Waits until the real workers of `master` are `pids` (old ones may take a moment
/// to finish exiting after their exit hook ran).
fn wait_real_workers(nginx: &Nginx, master: u32, pids: &BTreeSet<u32>) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let real: BTreeSet<u32> = nginx.workers(master).into_iter().collect();
        if &real == pids {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "real workers {real:?}, registry says {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_matches_the_real_workers_through_start_reload_and_kill9() {
    let _serial = serial();
    let (nginx, master) = start(&Config::default());
    let path = nginx.registry();

    nginx.wait_n(EventKind::WorkerStart, 2);
    let s = status(&path);
    assert_eq!(s["consistent"], true);
    let g1 = generation(&s, 1);
    assert_eq!(g1["kind"], "start");
    assert_eq!(g1["state"], "running");
    assert_eq!(g1["master_pid"], master);
    assert_eq!(g1["live_workers"], 2);
    assert_eq!(g1["expected_workers"], 2);
    let pids = running(&s, 1);
    wait_real_workers(&nginx, master, &pids);
    for w in s["workers"].as_array().unwrap() {
        assert_eq!(w["process_alive"], true, "{w}");
        assert!(w["heartbeat_age_seconds"].as_f64().unwrap() < 10.0, "{w}");
    }
    let table = cli_on("status", &path, &[]);
    for pid in &pids {
        assert!(
            table.stdout.contains(&format!("1-{pid}")),
            "{}",
            table.stdout
        );
    }
    // One of them leads, from the first term.
    let leader = s["leader"]["pid"].as_u64().unwrap() as u32;
    assert!(pids.contains(&leader), "{s:#}");
    assert_eq!(
        (s["leader"]["term"].as_u64(), s["leader"]["cause"].as_str()),
        (Some(1), Some("start"))
    );
    assert!(
        table.stdout.contains(&format!("leader    1-{leader} ")),
        "{}",
        table.stdout
    );

    // Reload: generation 2 takes over, generation 1 ends.
    signal(master, libc::SIGHUP);
    nginx.wait("the reload", |ev| {
        of_gen(ev, EventKind::WorkerStart, 2) == 2 && of_gen(ev, EventKind::MasterExit, 1) == 1
    });
    let s = status(&path);
    let g2 = generation(&s, 2);
    assert_eq!(g2["kind"], "reload");
    assert_eq!(g2["live_workers"], 2);
    assert_eq!(g2["master_pid"], master);
    assert!(running(&s, 1).is_empty(), "{s:#}");
    let pids = running(&s, 2);
    assert_eq!(pids.len(), 2);
    wait_real_workers(&nginx, master, &pids);

    // kill -9 of a worker: its respawn replaces it in the registry.
    let victim = *pids.iter().next().unwrap();
    common::nginx::signal(victim, libc::SIGKILL);
    nginx.wait("the crash and the respawn", |ev| {
        ev.iter()
            .any(|e| e.is(EventKind::WorkerCrash) && e.pid() == Some(victim))
            && of_gen(ev, EventKind::WorkerStart, 2) == 3
    });
    let s = status(&path);
    let pids = running(&s, 2);
    assert_eq!(pids.len(), 2);
    assert!(!pids.contains(&victim));
    wait_real_workers(&nginx, master, &pids);
    let g2 = generation(&s, 2);
    assert_eq!(
        (g2["crashes"].as_u64(), g2["respawns"].as_u64()),
        (Some(1), Some(1))
    );
    let respawned = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["replaces_pid"] == victim)
        .unwrap_or_else(|| panic!("no worker replaces {victim}: {s:#}"));
    assert_eq!(respawned["respawns"], 1);
    assert_eq!(respawned["state"], "running");
    assert_eq!(s["stats"]["crashes"], 1);
    assert_eq!(s["stats"]["reloads"], 1);
}

/// A child process killed and reaped when dropped.
struct Follower(Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn events_follow_streams_a_reload_as_it_happens() {
    let _serial = serial();
    let mut nginx = Nginx::new();
    let shm = format!("wmcli{}", nginx.port);
    nginx.write_config(&Config {
        opts: format!("shm = \"{shm}\","),
        ..Config::default()
    });
    let prefix = nginx.prefix().to_str().unwrap().to_string();
    let _registry = RemoveOnDrop(naming::default_path(&format!("{prefix}/"), &shm, "http"));
    let master = nginx.start();
    nginx.wait_n(EventKind::WorkerStart, 2);

    let mut follower = Follower(
        Command::new(common::CLI)
            .args([
                "events", "--follow", "--json", "--prefix", &prefix, "--shm", &shm,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let next_until = |seen: &mut Vec<Value>, done: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the follower stopped or fell silent after {seen:#?}"));
            let event: Value = serde_json::from_str(&line).unwrap();
            let finished = done(&event);
            seen.push(event);
            if finished {
                return;
            }
        }
    };
    // The journal so far, then the reload as it happens.
    next_until(&mut seen, &|e| {
        e["event"] == "worker_start" && e["n_mine"] == 2 && e["generation"] == 1
    });
    signal(master, libc::SIGHUP);
    next_until(&mut seen, &|e| e["event"] == "master_start");
    assert_eq!(seen.last().unwrap()["kind"], "reload");
    assert_eq!(seen.last().unwrap()["generation"], 2);
    next_until(&mut seen, &|e| e["event"] == "master_exit");
    assert_eq!(seen.last().unwrap()["generation"], 1);
    assert_eq!(seen.last().unwrap()["reason"], "reload");
    // Every event once, in order.
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn metrics_from_the_cli_and_from_lua_parse_and_agree() {
    let _serial = serial();
    let (nginx, _master) = start(&Config::default());
    nginx.wait_n(EventKind::WorkerStart, 2);
    let from_lua = nginx.get("/metrics");
    let run = cli_on("metrics", &nginx.registry(), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let path = nginx.registry().display().to_string();
    for text in [&from_lua, &run.stdout] {
        let samples = parse_exposition(text);
        let info = format!("worker_manager_registry_info{{layout_version=\"3\",path=\"{path}\"}}");
        assert_eq!(sample(&samples, &info), 1.0);
        assert_eq!(
            sample(
                &samples,
                "worker_manager_generation_workers{generation=\"1\",state=\"running\"}"
            ),
            2.0
        );
        assert_eq!(
            sample(
                &samples,
                "worker_manager_events_total{event=\"worker_start\"}"
            ),
            2.0
        );
        assert_eq!(
            sample(&samples, "worker_manager_generations_total{kind=\"start\"}"),
            1.0
        );
        let beats = samples
            .iter()
            .filter(|s| s.starts_with("worker_manager_worker_heartbeat_age_seconds{"))
            .count();
        assert_eq!(beats, 2, "{samples:#?}");
    }
}

#[test]
fn a_callback_holding_the_lock_for_seconds_never_holds_up_the_cli() {
    let _serial = serial();
    let mut nginx = Nginx::new();
    let flags = nginx.prefix().join("flags");
    std::fs::create_dir(&flags).unwrap();
    std::fs::set_permissions(&flags, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // The first worker_start callback sleeps 5 s, holding the registry lock.
    nginx.write_config(&Config {
        in_callback: format!(
            r#"if name == "worker_start" then
                   local flag = "{flag}"
                   local f = io.open(flag, "r")
                   if f then f:close() else
                       assert(io.open(flag, "w")):close()
                       os.execute("sleep 5")
                   end
               end"#,
            flag = flags.join("held").display()
        ),
        ..Config::default()
    });
    let master = nginx.start();
    let path = nginx.registry();
    let deadline = Instant::now() + STEP_TIMEOUT;
    let holder = loop {
        let started = Instant::now();
        let run = cli_on("status", &path, &["--json"]);
        let took = started.elapsed();
        if run.code == 0 {
            let s: Value = serde_json::from_str(&run.stdout).unwrap();
            if s["lock"]["op"] == "user" && s["lock"]["held_seconds"].as_f64().unwrap() > 0.5 {
                assert!(took < Duration::from_secs(2), "status took {took:?}");
                assert_eq!(s["consistent"], true, "{s:#}");
                break s["lock"]["holder_pid"].as_u64().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the lock was never seen held: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let started = Instant::now();
    let metrics = cli(&["metrics", "--path", path.to_str().unwrap()]);
    assert!(started.elapsed() < Duration::from_secs(2));
    let samples = parse_exposition(&metrics.stdout);
    assert!(sample(&samples, "worker_manager_lock_held_seconds{}") > 0.5);
    assert!(nginx.workers(master).contains(&(holder as u32)), "{holder}");
    nginx.wait_n(EventKind::WorkerStart, 2);
}
