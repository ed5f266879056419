//! The operator verbs against a real nginx (Debian's, with the real Lua module):
//! `worker-manager reload` and `upgrade` report nginx's verdict (committed, given up
//! after `init_by_lua`, rejected before it) with nginx's own error lines; a failed
//! upgrade leaves the old master serving and nothing else running; every bad input
//! is refused before any signal; the systemd drop-in's own command line fails a
//! reload nginx rejects. Serialized: one nginx at a time.

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::nginx::{alive, serial, signal, slowdown, start, Config, Nginx};
use common::{cli, cli_on, output, spawn, Run, CLI};
use serde_json::Value;
use worker_manager::{EventKind, GenerationConfig, Options, Registry};

/// Runs `worker-manager VERB --path PATH --json EXTRA...`: the run, and the JSON
/// object it printed, whose `exit_code` is checked against the real one.
fn operate(verb: &str, path: &Path, extra: &[&str]) -> (Run, Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let run = cli_on(verb, path, &args);
    let json: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {run:?}"));
    assert_eq!(json["exit_code"], run.code, "{run:?}");
    assert_eq!(json["command"], verb);
    (run, json)
}

fn status(path: &Path) -> Value {
    let run = cli_on("status", path, &["--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

/// The newest generation nginx committed that has not ended, from `status`.
fn serving(status: &Value) -> &Value {
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|g| !g["committed"].is_null() && g["state"] != "exited")
        .unwrap_or_else(|| panic!("nothing serves: {status:#}"))
}

/// `config`, and a listener on a loopback port that `config` now also listens on:
/// nginx retries the bind for about 2.5 s, then gives the configuration up.
fn with_a_taken_port(config: &Config) -> (Config, TcpListener) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config.clone();
    config.http = format!(
        "server {{ listen 127.0.0.1:{}; }}",
        taken.local_addr().unwrap().port()
    );
    (config, taken)
}

/// `config` with a directive nginx does not know, in the `http` block: rejected
/// while nginx parses it, before `init_by_lua` runs.
fn with_a_syntax_error(config: &Config) -> Config {
    let mut config = config.clone();
    config.http = "no_such_directive on;".into();
    config
}

fn daemon() -> Config {
    Config {
        daemon: true,
        ..Config::synopsis()
    }
}

fn log_has(json: &Value, needles: &[&str]) -> bool {
    json["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .any(|line| needles.iter().all(|n| line.contains(n)))
}

/// nginx serves on its port, with the workers of `master`.
fn answers(nginx: &Nginx, master: u32) {
    let body = nginx.get("/status");
    let pid: u32 = body
        .trim()
        .rsplit("pid=")
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("/status said {body:?}"));
    assert!(
        nginx.workers(master).contains(&pid),
        "served by {pid}, not a worker of {master}: {body}"
    );
}

#[test]
fn a_reload_nginx_commits_exits_0_with_the_generation_the_registry_serves() {
    let _serial = serial();
    for config in Config::both(|_| {}) {
        let (nginx, master) = start(&config);
        nginx.wait_n(EventKind::WorkerStart, 2);
        let path = nginx.registry();

        let (run, json) = operate("reload", &path, &[]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(json["verdict"], "committed");
        assert_eq!(json["master_pid"], master);
        assert_eq!(json["previous_generation"], 1);
        assert!(json["cause"].is_null(), "{json:#}");
        let s = status(&path);
        let g = serving(&s);
        assert_eq!(json["generation"], g["id"], "{s:#}");
        assert_eq!(g["kind"], "reload");
        assert_eq!(g["live_workers"], 2);
        assert_eq!(s["last_verdict"]["generation"], g["id"]);
        assert_eq!(s["last_verdict"]["verdict"], "committed");
        let log = json["error_log"].as_str().unwrap();
        assert_eq!(Path::new(log), nginx.prefix().join("logs/error.log"));
        assert!(json["log"].as_array().unwrap().is_empty(), "{json:#}");

        // As text, naming the master by its pid file.
        let pid_file = nginx.prefix().join("logs/nginx.pid");
        let run = cli_on("reload", &path, &["--pid-file", pid_file.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("sent SIGHUP to master"), "{run:?}");
        assert!(
            run.stdout.contains(&format!(
                "reload committed: generation 3 serves (master {master}"
            )),
            "{run:?}"
        );
        answers(&nginx, master);
    }
}

#[test]
fn a_reload_nginx_gives_up_after_init_by_lua_fails_with_the_cause_and_nginx_s_lines() {
    let _serial = serial();
    let (nginx, master) = start(&Config::synopsis());
    nginx.wait_n(EventKind::WorkerStart, 2);
    let (config, _taken) = with_a_taken_port(&Config::synopsis());
    nginx.write_config(&config);

    let (run, json) = operate("reload", &nginx.registry(), &[]);
    assert_eq!(run.code, 7, "{run:?}");
    assert_eq!(json["verdict"], "failed");
    assert_eq!(json["generation"], 2);
    let cause = json["cause"].as_str().unwrap();
    assert!(
        cause.contains("generation_abort, cause failed") && cause.contains("bind()"),
        "{cause}"
    );
    assert!(
        cause.contains("the old configuration serves on (generation 1"),
        "{cause}"
    );
    assert!(
        log_has(&json, &["[emerg]", "still could not bind()"]),
        "{json:#}"
    );
    assert!(
        run.stderr
            .contains("reload failed: nginx gave generation 2 up"),
        "{run:?}"
    );

    let s = status(&nginx.registry());
    assert_eq!(serving(&s)["id"], 1);
    assert_eq!(s["last_verdict"]["verdict"], "failed");
    answers(&nginx, master);
}

#[test]
fn a_configuration_nginx_rejects_before_init_by_lua_fails_at_once_and_the_old_one_serves() {
    let _serial = serial();
    let (nginx, master) = start(&Config::synopsis());
    nginx.wait_n(EventKind::WorkerStart, 2);
    nginx.write_config(&with_a_syntax_error(&Config::synopsis()));

    let (run, json) = operate("reload", &nginx.registry(), &["--timeout", "60"]);
    assert_eq!(run.code, 7, "{run:?}");
    assert_eq!(json["verdict"], "rejected");
    assert!(json["generation"].is_null(), "{json:#}");
    assert!(
        json["elapsed_seconds"].as_f64().unwrap() < 30.0,
        "not at once: {json:#}"
    );
    assert!(
        log_has(
            &json,
            &["[emerg]", "unknown directive \"no_such_directive\""]
        ),
        "{json:#}"
    );
    assert!(
        json["cause"]
            .as_str()
            .unwrap()
            .contains("the old configuration serves on (generation 1"),
        "{json:#}"
    );
    // Text: nginx's line shown.
    let run = cli_on("reload", &nginx.registry(), &[]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(
        run.stdout.contains("nginx's error log since the signal"),
        "{run:?}"
    );
    assert!(run.stdout.contains("[emerg]"), "{run:?}");
    assert!(run.stderr.contains("reload rejected"), "{run:?}");

    let s = status(&nginx.registry());
    assert_eq!(serving(&s)["id"], 1);
    assert_eq!(serving(&s)["live_workers"], 2);
    answers(&nginx, master);
}

#[test]
fn an_upgrade_commits_the_new_master_and_the_old_one_quits() {
    let _serial = serial();
    let (mut nginx, old) = start(&daemon());
    nginx.wait_n(EventKind::WorkerStart, 2);

    let (run, json) = operate("upgrade", &nginx.registry(), &[]);
    let new = json["new_master_pid"].as_u64().map(|p| p as u32);
    if let Some(new) = new {
        nginx.adopt(new);
    }
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json["verdict"], "committed");
    let new = new.unwrap();
    assert_ne!(new, old);
    assert!(!alive(old), "the old master quit");
    assert_eq!(nginx.master(), new, "the pid file names the new master");
    let s = status(&nginx.registry());
    let g = serving(&s);
    assert_eq!(json["generation"], g["id"]);
    assert_eq!(g["kind"], "upgrade");
    assert_eq!(g["master_pid"], new);
    let steps: Vec<&str> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    for step in [
        format!("sent SIGUSR2 to master {old}"),
        format!("sent SIGWINCH to old master {old}"),
        format!("sent SIGQUIT to old master {old}"),
        format!("old master {old} exited"),
    ] {
        assert!(steps.contains(&step.as_str()), "{step} not in {steps:#?}");
    }
    let exits = nginx.named(EventKind::MasterExit);
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].generation(), 1);
    answers(&nginx, new);
}

#[test]
fn a_failed_upgrade_leaves_the_old_master_serving_and_nothing_else_running() {
    let _serial = serial();
    let (mut nginx, old) = start(&daemon());
    nginx.wait_n(EventKind::WorkerStart, 2);
    let path = nginx.registry();

    // The new master's configuration is given up after init_by_lua.
    let (config, taken) = with_a_taken_port(&daemon());
    nginx.write_config(&config);
    let (run, json) = operate("upgrade", &path, &[]);
    if let Some(new) = json["new_master_pid"].as_u64() {
        nginx.adopt(new as u32);
    }
    assert_eq!(run.code, 7, "{run:?}");
    assert_eq!(json["verdict"], "failed");
    let new = json["new_master_pid"].as_u64().unwrap() as u32;
    assert!(!alive(new));
    assert!(log_has(&json, &["[emerg]", "bind()"]), "{json:#}");
    let cause = json["cause"].as_str().unwrap();
    // Stopped, or gone by itself as nginx gave its configuration up.
    assert!(
        cause.contains(&format!("new master {new} stopped"))
            || cause.contains(&format!("new master {new} exited by itself")),
        "{cause}"
    );
    assert!(
        cause.contains("the old configuration serves on (generation 1"),
        "{cause}"
    );
    drop(taken);

    // The new binary rejects its configuration before init_by_lua.
    nginx.write_config(&with_a_syntax_error(&daemon()));
    let (run, json) = operate("upgrade", &path, &[]);
    assert_eq!(run.code, 7, "{run:?}");
    assert_eq!(json["verdict"], "rejected");
    assert!(
        log_has(&json, &["[emerg]", "no_such_directive"]),
        "{json:#}"
    );

    // Nothing but the old master and its two workers is left, and the next upgrade
    // goes through.
    assert!(alive(old));
    assert_eq!(nginx.workers(old).len(), 2, "children of {old}");
    answers(&nginx, old);
    nginx.write_config(&daemon());
    let (run, json) = operate("upgrade", &path, &[]);
    if let Some(new) = json["new_master_pid"].as_u64() {
        nginx.adopt(new as u32);
    }
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!alive(old));
}

#[test]
fn an_upgrade_whose_workers_never_start_is_stopped_at_the_timeout() {
    let _serial = serial();
    let mut config = daemon();
    let (mut nginx, old) = start(&config);
    nginx.wait_n(EventKind::WorkerStart, 2);
    // The new master's workers never register: its configuration is never committed.
    let hold = nginx.prefix().join("hold-workers");
    config.before_worker = format!("if io.open({:?}) then return end", hold.to_str().unwrap());
    nginx.write_config(&config);
    fs::write(&hold, "").unwrap();

    let timeout = (3 * slowdown()).to_string();
    let (run, json) = operate("upgrade", &nginx.registry(), &["--timeout", &timeout]);
    if let Some(new) = json["new_master_pid"].as_u64() {
        nginx.adopt(new as u32);
    }
    assert_eq!(run.code, 8, "{run:?}");
    assert_eq!(json["verdict"], "timeout");
    let new = json["new_master_pid"].as_u64().unwrap() as u32;
    let steps = json["steps"].to_string();
    assert!(
        steps.contains(&format!("sent SIGQUIT to new master {new}")),
        "{steps}"
    );
    assert!(!alive(new));
    assert!(alive(old));
    assert_eq!(nginx.workers(old).len(), 2, "children of {old}");
    answers(&nginx, old);
}

#[test]
fn no_registry_and_a_bad_timeout_are_refused() {
    let run = cli(&["reload", "--path", "/nonexistent/registry.wm"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("no registry at /nonexistent/registry.wm"),
        "{run:?}"
    );
    let (run, json) = operate("upgrade", Path::new("/nonexistent/registry.wm"), &[]);
    assert_eq!(run.code, 3);
    assert_eq!(json["verdict"], "refused");
    for timeout in ["0", "-1", "soon", "inf", "NaN"] {
        let timeout = format!("--timeout={timeout}");
        let run = cli(&["reload", "--path", "/x.wm", &timeout]);
        assert_eq!(run.code, 2, "--timeout {timeout}: {run:?}");
        assert!(run.stderr.contains("--timeout"), "{run:?}");
    }
}

#[test]
fn a_master_that_is_gone_is_refused() {
    let _serial = serial();
    let (nginx, master) = start(&Config::synopsis());
    nginx.wait_n(EventKind::WorkerStart, 2);
    let workers = nginx.workers(master);
    signal(master, libc::SIGKILL);
    for pid in workers {
        signal(pid, libc::SIGKILL);
    }
    nginx.wait_gone(master);
    for verb in ["reload", "upgrade"] {
        let (run, json) = operate(verb, &nginx.registry(), &[]);
        assert_eq!(run.code, 6, "{run:?}");
        assert_eq!(json["verdict"], "refused");
        let cause = json["cause"].as_str().unwrap();
        assert!(
            cause.contains(&format!(
                "the master of generation 1, pid {master}, is gone"
            )),
            "{cause}"
        );
    }
}

/// A master that does not handle SIGHUP (not nginx, or not done starting) would be
/// ended by it: refused. The master here is this test process, registered through
/// the library as a server other than nginx would be.
#[test]
fn a_master_without_a_handler_for_the_signal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.wm");
    let registry = Registry::open(&path, &Options::default()).unwrap();
    let generation = registry
        .register_generation(&GenerationConfig::default(), |_| {})
        .unwrap();
    registry.commit_generation(generation, |_| {}).unwrap();
    let me = std::process::id();
    for (verb, signal) in [("reload", "SIGHUP"), ("upgrade", "SIGUSR2")] {
        let (run, json) = operate(verb, &path, &[]);
        assert_eq!(run.code, 6, "{run:?}");
        let cause = json["cause"].as_str().unwrap();
        assert!(
            cause.contains(&format!("master {me} has no handler for {signal}")),
            "{cause}"
        );
    }
}

#[test]
fn a_pid_file_that_disagrees_with_the_registry_is_refused_and_nginx_left_alone() {
    let _serial = serial();
    let (nginx, master) = start(&Config::synopsis());
    nginx.wait_n(EventKind::WorkerStart, 2);
    let path = nginx.registry();
    let lying = nginx.prefix().join("lying.pid");
    let me = std::process::id();
    fs::write(&lying, format!("{me}\n")).unwrap();
    let garbage = nginx.prefix().join("garbage.pid");
    fs::write(&garbage, "nginx\n").unwrap();
    let missing = nginx.prefix().join("missing.pid");
    for (file, says) in [
        (
            &lying,
            format!(
                "pid file {} says {me} but the registry's master is {master}",
                lying.display()
            ),
        ),
        (
            &garbage,
            format!("pid file {} holds no pid", garbage.display()),
        ),
        (
            &missing,
            format!("cannot read pid file {}", missing.display()),
        ),
    ] {
        for verb in ["reload", "upgrade"] {
            let (run, json) = operate(verb, &path, &["--pid-file", file.to_str().unwrap()]);
            assert_eq!(run.code, 6, "{run:?}");
            assert!(json["cause"].as_str().unwrap().contains(&says), "{json:#}");
        }
    }
    // Nothing was signalled: the next reload is the first.
    let (run, json) = operate("reload", &path, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json["generation"], 2);
    assert_eq!(nginx.named(EventKind::MasterStart).len(), 2);
}

#[test]
fn a_reload_in_flight_and_a_concurrent_verb_are_refused() {
    let _serial = serial();
    let (nginx, master) = start(&Config::synopsis());
    nginx.wait_n(EventKind::WorkerStart, 2);
    let path = nginx.registry();
    let (config, _taken) = with_a_taken_port(&Config::synopsis());
    nginx.write_config(&config);

    // A reload that waits about 2.5 s for nginx to give up the port...
    let first = spawn(
        Command::new(CLI)
            .args(["reload", "--path", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let holder = first.id();
    nginx.wait("the first reload's generation", |ev| {
        ev.iter()
            .any(|e| e.is(EventKind::MasterStart) && e.generation() == 2)
    });
    // ... during which another operator is refused.
    for verb in ["reload", "upgrade"] {
        let (run, json) = operate(verb, &path, &[]);
        assert_eq!(run.code, 6, "{run:?}");
        let cause = json["cause"].as_str().unwrap();
        assert!(
            cause.contains(&format!(
                "another worker-manager reload or upgrade (pid {holder}) is acting on registry"
            )),
            "{cause}"
        );
    }
    let first: Run = first.wait_with_output().unwrap().into();
    assert_eq!(first.code, 7, "{first:?}");

    // A reload nginx is loading, signalled by someone else.
    signal(master, libc::SIGHUP);
    nginx.wait("the second reload's generation", |ev| {
        ev.iter()
            .any(|e| e.is(EventKind::MasterStart) && e.generation() == 3)
    });
    let (run, json) = operate("reload", &path, &[]);
    assert_eq!(run.code, 6, "{run:?}");
    let cause = json["cause"].as_str().unwrap();
    assert!(
        cause.contains(&format!(
            "generation 3 (reload, master {master}) is loading and nginx has not given its verdict yet"
        )),
        "{cause}"
    );
    nginx.wait("the second reload's abort", |ev| {
        ev.iter()
            .any(|e| e.is(EventKind::GenerationAbort) && e.generation() == 3)
    });
}

#[test]
fn an_upgrade_in_progress_is_refused_unless_the_pid_file_names_the_master_to_reload() {
    let _serial = serial();
    let (mut nginx, old) = start(&daemon());
    nginx.wait_n(EventKind::WorkerStart, 2);
    let path = nginx.registry();
    signal(old, libc::SIGUSR2);
    let new = nginx.wait_for_pid(Some(old));
    nginx.adopt(new);
    nginx.wait("the new master's workers", |ev| {
        ev.iter()
            .filter(|e| e.is(EventKind::WorkerStart) && e.generation() == 2)
            .count()
            == 2
    });
    let oldbin = nginx.prefix().join("logs/nginx.pid.oldbin");
    let pid_file = nginx.prefix().join("logs/nginx.pid");
    for (verb, extra, says) in [
        ("reload", None, "two masters are live".to_string()),
        ("upgrade", None, "two masters are live".to_string()),
        (
            "reload",
            Some(&oldbin),
            format!("master {old} has started a new binary, master {new} (generation 2)"),
        ),
        (
            "upgrade",
            Some(&pid_file),
            format!("a binary upgrade is in progress: masters {new} and {old} are live"),
        ),
    ] {
        let extra: Vec<&str> = extra
            .map(|f| vec!["--pid-file", f.to_str().unwrap()])
            .unwrap_or_default();
        let (run, json) = operate(verb, &path, &extra);
        assert_eq!(run.code, 6, "{verb} {extra:?}: {run:?}");
        let cause = json["cause"].as_str().unwrap();
        assert!(cause.contains(&says), "{verb} {extra:?}: {cause}");
    }
    // The new master reloads as any master does.
    let (run, json) = operate("reload", &path, &["--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(json["master_pid"], new);
    assert!(alive(old));
    // The old workers gone, the old master left: nothing of it in the registry, but
    // nginx would still ignore an upgrade.
    signal(old, libc::SIGWINCH);
    nginx.wait("the old generation's end", |ev| {
        ev.iter()
            .any(|e| e.is(EventKind::MasterExit) && e.generation() == 1)
    });
    let (run, json) = operate("upgrade", &path, &[]);
    assert_eq!(run.code, 6, "{run:?}");
    let cause = json["cause"].as_str().unwrap();
    assert!(
        cause.contains(&format!(
            "master {new} came from a binary upgrade of master {old}, which still runs"
        )),
        "{cause}"
    );
}

/// The drop-in's settings (`Environment=`) and the command its `ExecReload=` runs.
struct DropIn {
    environment: HashMap<String, String>,
    exec_reload: String,
}

fn drop_in_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/systemd/nginx.service.d/worker-manager.conf")
}

impl DropIn {
    fn read() -> DropIn {
        let text = fs::read_to_string(drop_in_path()).unwrap();
        let mut environment = HashMap::new();
        let mut reloads = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(setting) = line.strip_prefix("Environment=") {
                let setting = setting.trim_matches('"');
                let (key, value) = setting.split_once('=').unwrap();
                environment.insert(key.to_string(), value.to_string());
            } else if let Some(command) = line.strip_prefix("ExecReload=") {
                reloads.push(command.to_string());
            }
        }
        // An empty ExecReload= first clears the packaged `nginx -s reload`.
        assert_eq!(reloads.len(), 2, "{reloads:?}");
        assert_eq!(reloads[0], "", "{reloads:?}");
        DropIn {
            environment,
            exec_reload: reloads.pop().unwrap(),
        }
    }

    /// The command as systemd runs it: `$NAME` split at whitespace into words,
    /// `${NAME}` one word.
    fn argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        for word in self.exec_reload.split_whitespace() {
            if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                argv.push(self.environment[name].clone());
            } else if let Some(name) = word.strip_prefix('$') {
                argv.extend(self.environment[name].split_whitespace().map(String::from));
            } else {
                argv.push(word.to_string());
            }
        }
        argv
    }
}

#[test]
fn the_systemd_drop_in_s_command_line_fails_a_reload_nginx_rejects() {
    let _serial = serial();
    let mut drop_in = DropIn::read();
    // Edited as its comments say: where the registry is, where nginx's pid file is.
    assert_eq!(drop_in.environment["WM_PID_FILE"], "/run/nginx.pid");
    assert!(drop_in.environment.contains_key("WM_REGISTRY"));
    let argv = drop_in.argv();
    assert_eq!(
        argv[0], "/usr/local/bin/worker-manager",
        "where make install puts it"
    );
    assert_eq!(argv[1], "reload");

    // systemd itself reads it, over Debian's nginx.service, with the binary where
    // this build has it.
    let units = tempfile::tempdir().unwrap();
    let service = Path::new("/lib/systemd/system/nginx.service");
    fs::copy(service, units.path().join("nginx.service")).unwrap();
    fs::create_dir(units.path().join("nginx.service.d")).unwrap();
    fs::write(
        units.path().join("nginx.service.d/worker-manager.conf"),
        fs::read_to_string(drop_in_path())
            .unwrap()
            .replace("/usr/local/bin/worker-manager", CLI),
    )
    .unwrap();
    let verify = output(
        Command::new("systemd-analyze")
            .args(["verify", "nginx.service"])
            .env("SYSTEMD_UNIT_PATH", format!("{}:", units.path().display())),
    );
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let (nginx, master) = start(&daemon());
    nginx.wait_n(EventKind::WorkerStart, 2);
    drop_in.environment.insert(
        "WM_REGISTRY".into(),
        format!("--path {}", nginx.registry().display()),
    );
    drop_in.environment.insert(
        "WM_PID_FILE".into(),
        nginx.prefix().join("logs/nginx.pid").display().to_string(),
    );
    let reload = || -> Run {
        let argv = drop_in.argv();
        output(Command::new(CLI).args(&argv[1..])).into()
    };

    let run = reload();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("reload committed: generation 2"),
        "{run:?}"
    );

    let (config, _taken) = with_a_taken_port(&daemon());
    nginx.write_config(&config);
    let run = reload();
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("reload failed"), "{run:?}");
    assert!(run.stdout.contains("still could not bind()"), "{run:?}");
    answers(&nginx, master);
}
