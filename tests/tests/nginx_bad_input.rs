//! Bad input to the OpenResty binding in a real nginx: every option wrong in every
//! way, every kind of bad registry file, a read-only and a full file system, two
//! nginx on one registry, a reload onto a broken registry. Each is an error naming
//! its cause; nothing crashes, no file is changed, nginx keeps serving.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::nginx::{serial, signal, start, Config, Nginx};
use common::{patch_header, HeaderField, Tmpfs};
use worker_manager::{EventKind, Observer, Options, Registry, StartKind};

/// One misuse: a Lua call (with `init`, `P`, a valid path, in scope) and a fragment
/// of the error it must raise.
struct Case {
    call: String,
    error: String,
}

fn case(call: impl Into<String>, error: impl Into<String>) -> Case {
    Case {
        call: call.into(),
        error: error.into(),
    }
}

/// Every option given each value of a wrong type, each numeric option each value out
/// of range, unknown names, malformed names and paths, wrong callbacks.
fn option_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let wrong = [
        ("1", "number"),
        ("true", "boolean"),
        ("{}", "table"),
        ("print", "function"),
        ("'1'", "string"),
    ];
    let options = [
        ("shm", "string"),
        ("path", "string"),
        ("lib", "string"),
        ("interval", "number"),
        ("failed", "number"),
        ("lock_timeout", "number"),
        ("start_timeout", "number"),
        ("crash_loop_intensity", "number"),
        ("crash_loop_period", "number"),
        ("exit_hook", "boolean"),
        ("on_worker_crash", "function"),
        ("on_generation_abort", "function"),
        ("on_worker_hang", "function"),
        ("on_worker_recover", "function"),
        ("on_worker_crash_loop", "function"),
        ("on_worker_crash_loop_end", "function"),
    ];
    for (name, ty) in options {
        for (value, got) in wrong.iter().filter(|(_, got)| *got != ty) {
            let path = if name == "path" { "" } else { "path = P, " };
            cases.push(case(
                format!("init({{ {path}{name} = {value} }})"),
                format!("option '{name}' must be a {ty}, got {got}"),
            ));
        }
    }
    for (name, max) in [
        ("interval", "86400"),
        ("failed", "86400"),
        ("lock_timeout", "3600"),
        ("start_timeout", "86400"),
        ("crash_loop_period", "86400"),
    ] {
        for value in [
            "0",
            "-1",
            "0.0001",
            "1e12",
            "0/0",
            "math.huge",
            "-math.huge",
        ] {
            cases.push(case(
                format!("init({{ path = P, {name} = {value} }})"),
                format!("option '{name}' must be between 0.001 and {max} seconds"),
            ));
        }
    }
    for value in ["-1", "11", "1.5", "0/0", "math.huge"] {
        cases.push(case(
            format!("init({{ path = P, crash_loop_intensity = {value} }})"),
            "option 'crash_loop_intensity' must be a whole number between 0 and 10 crashes",
        ));
    }
    for (key, shown) in [("intervall", "intervall"), ("SHM", "SHM"), ("[1]", "1")] {
        cases.push(case(
            format!("init({{ path = P, {key} = 1 }})"),
            format!("unknown option '{shown}'"),
        ));
    }
    for shm in ["''", "'a/b'", "'x y'", "'../x'"] {
        cases.push(case(
            format!("init({{ shm = {shm} }})"),
            "option 'shm' may only hold letters",
        ));
    }
    for path in ["''", "'registry.wm'", "'./registry.wm'"] {
        cases.push(case(
            format!("init({{ path = {path} }})"),
            "option 'path' must be an absolute path",
        ));
    }
    cases.push(case(
        "init({ path = P .. '\\0.wm' })",
        "option 'path' holds a NUL byte",
    ));
    cases.push(case(
        "init({ path = P, lib = '/x.so\\0' })",
        "option 'lib' holds a NUL byte",
    ));
    cases.push(case("init({})", "option 'shm' or 'path' is required"));
    for (opts, got) in [("'opts'", "string"), ("nil", "nil"), ("42", "number")] {
        cases.push(case(
            format!("init({opts})"),
            format!("opts must be a table, got {got}"),
        ));
    }
    for (args, error) in [
        (
            "42",
            "master_start_cb must be a function or nil, got number",
        ),
        (
            "'f'",
            "master_start_cb must be a function or nil, got string",
        ),
        (
            "nil, {}",
            "master_exit_cb must be a function or nil, got table",
        ),
        (
            "print, true",
            "master_exit_cb must be a function or nil, got boolean",
        ),
    ] {
        cases.push(case(format!("init({{ path = P }}, {args})"), error));
    }
    cases
}

/// Lua that runs each case in a protected call and logs `<tag> <n>: <ok> <error>`.
fn try_all(tag: &str, cases: &[Case]) -> String {
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "do local ok, err = pcall(function() return {} end) \
                 ngx.log(ngx.ERR, '{tag} {i}: ', tostring(ok), ' ', tostring(err)) end\n",
                c.call
            )
        })
        .collect()
}

/// The logged outcome of case `i` of `tag`.
fn outcome<'a>(log: &'a str, tag: &str, i: usize) -> &'a str {
    let tag = format!(" {tag} {i}: ");
    let line = log
        .lines()
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("case {i} never ran:\n{log}"));
    &line[line.find(&tag).unwrap() + tag.len()..]
}

#[test]
fn every_wrong_option_is_raised_naming_the_option_and_nginx_serves() {
    let _serial = serial();
    let mut nginx = Nginx::new();
    let cases = option_cases();
    let worker_cases = vec![
        case(
            "wm.on_init_worker_by_lua(42)",
            "start_cb must be a function or nil, got number",
        ),
        case(
            "wm.on_init_worker_by_lua(nil, 'x')",
            "exit_cb must be a function or nil, got string",
        ),
    ];
    let lua = format!(
        r#"
    init_by_lua_block {{
        local wm = require("resty.worker.manager")
        local init = wm.on_init_by_lua
        local P = "{registry}"
        {cases}
        assert(init({{ path = P }}))
    }}
    init_worker_by_lua_block {{
        local wm = require("resty.worker.manager")
        {worker_cases}
        assert(wm.on_init_worker_by_lua())
        ngx.log(ngx.ERR, "WORKER REGISTERED")
    }}
"#,
        registry = nginx.registry().display(),
        cases = try_all("INIT", &cases),
        worker_cases = try_all("WORKER", &worker_cases),
    );
    nginx.write_config(&Config {
        lua_blocks: Some(lua),
        workers: 1,
        ..Config::default()
    });
    let master = nginx.start();
    nginx.wait("the worker", |_| {
        nginx.stderr().contains("WORKER REGISTERED")
    });
    let log = nginx.stderr();
    for (i, c) in cases.iter().enumerate() {
        let got = outcome(&log, "INIT", i);
        assert!(
            got.starts_with("false ") && got.contains(&c.error),
            "{}: expected an error with \"{}\", got: {got}",
            c.call,
            c.error
        );
    }
    for (i, c) in worker_cases.iter().enumerate() {
        let got = outcome(&log, "WORKER", i);
        assert!(got.starts_with("false ") && got.contains(&c.error), "{got}");
    }
    assert!(!log.contains("signal"), "nothing crashed:\n{log}");
    nginx.wait_status("live=1 ");
    signal(master, libc::SIGQUIT);
    nginx.wait_gone(master);
}

/// A valid registry at `path`, made by the core and closed.
fn valid_registry(path: &Path) {
    drop(Registry::open(path, &Options::default()).unwrap());
}

#[test]
fn every_bad_registry_file_is_refused_by_cause_and_left_as_it_was() {
    let _serial = serial();
    // An nginx already using a registry: a second one must not take it over.
    let (first, first_master) = start(&Config::default());
    first.wait_status("live=2 ");
    let taken = first.registry();
    let first_seq = Observer::open(&taken).unwrap().next_seq();

    let mut nginx = Nginx::new();
    let bad = nginx.prefix().join("bad");
    fs::create_dir(&bad).unwrap();
    let file = |name: &str| bad.join(name);
    valid_registry(&file("target.wm"));
    symlink(file("target.wm"), file("symlink.wm")).unwrap();
    valid_registry(&file("nobody.wm"));
    let chown = Command::new("chown")
        .arg("nobody")
        .arg(file("nobody.wm"))
        .status()
        .unwrap();
    assert!(chown.success(), "chown needs root, as the test suite runs");
    valid_registry(&file("world.wm"));
    fs::set_permissions(file("world.wm"), fs::Permissions::from_mode(0o666)).unwrap();
    valid_registry(&file("truncated.wm"));
    fs::OpenOptions::new()
        .write(true)
        .open(file("truncated.wm"))
        .unwrap()
        .set_len(5000)
        .unwrap();
    fs::write(file("zero.wm"), vec![0u8; 405504]).unwrap();
    fs::write(file("foreign.wm"), "not a registry\n".repeat(20000)).unwrap();
    valid_registry(&file("newer.wm"));
    patch_header(&file("newer.wm"), HeaderField::LayoutVersion, 99);
    fs::create_dir(file("dir.wm")).unwrap();
    let _read_only = Tmpfs::mount(&file("ro"), "ro,size=1m");
    let _full = Tmpfs::mount(&file("tiny"), "size=64k");
    let tiny = file("tiny/registry.wm");

    let cases: Vec<(PathBuf, &str)> = vec![
        (
            file("symlink.wm"),
            "is a symbolic link; refusing to follow it",
        ),
        (
            file("nobody.wm"),
            "is owned by uid 65534, but this process runs as uid 0",
        ),
        (file("world.wm"), "is writable by any user (mode 666)"),
        (file("truncated.wm"), "is truncated: 5000 bytes"),
        (
            file("zero.wm"),
            "is not initialised (no magic number; zero-filled?)",
        ),
        (file("foreign.wm"), "is not a worker-manager registry"),
        (
            file("newer.wm"),
            "was written by layout version 99; this build reads version 3",
        ),
        (file("dir.wm"), "open failed: Is a directory"),
        (
            file("missing/registry.wm"),
            "open failed: No such file or directory",
        ),
        (file("ro/registry.wm"), "open failed: Read-only file system"),
        (tiny.clone(), "no space left to reserve 405504 bytes"),
        (taken.clone(), "is in use by another running master"),
    ];
    let before: Vec<Option<Vec<u8>>> = cases.iter().map(|(p, _)| fs::read(p).ok()).collect();
    let calls: Vec<Case> = cases
        .iter()
        .map(|(path, error)| {
            case(
                format!("returned(init({{ path = '{}' }}))", path.display()),
                *error,
            )
        })
        .collect();
    let lua = format!(
        r#"
    init_by_lua_block {{
        local init = require("resty.worker.manager").on_init_by_lua
        local function returned(ok, err) return tostring(ok) .. " " .. tostring(err) end
        {cases}
        assert(init({{ path = "{registry}" }}))
    }}
    init_worker_by_lua_block {{
        assert(require("resty.worker.manager").on_init_worker_by_lua())
    }}
"#,
        registry = nginx.registry().display(),
        cases = try_all("FILE", &calls),
    );
    nginx.write_config(&Config {
        lua_blocks: Some(lua),
        workers: 1,
        ..Config::default()
    });
    let master = nginx.start();
    nginx.wait_status("live=1 ");
    let log = nginx.stderr();
    for (i, (path, error)) in cases.iter().enumerate() {
        let got = outcome(&log, "FILE", i);
        assert!(
            got.starts_with("true nil registry ") && got.contains(error),
            "{}: expected nil and \"{error}\", got: {got}",
            path.display()
        );
        // The full file system's file is checked below; the live registry's heartbeats
        // change it, its journal is checked below.
        if *path != tiny && *path != taken {
            assert!(
                fs::read(path).ok() == before[i],
                "{} changed",
                path.display()
            );
        }
    }
    // The full file system keeps the empty file, as the core leaves it.
    assert_eq!(fs::metadata(&tiny).unwrap().len(), 0);
    // The first nginx's registry was not written to, and it still serves.
    assert_eq!(Observer::open(&taken).unwrap().next_seq(), first_seq);
    first.wait_status("live=2 ");
    for (pid, nginx) in [(master, &nginx), (first_master, &first)] {
        signal(pid, libc::SIGQUIT);
        nginx.wait_gone(pid);
    }
}

#[test]
fn a_registry_replaced_while_in_use_is_warned_about_and_tracking_goes_on() {
    let _serial = serial();
    let (nginx, master) = start(&Config::default());
    nginx.wait_status("live=2 ");
    let registry = nginx.registry();
    let kept = nginx.prefix().join("kept.wm");
    fs::rename(&registry, &kept).unwrap();
    fs::write(&registry, vec![0u8; 4096]).unwrap();
    const WARNING: &str = "was removed or replaced while in use";

    // The reload goes on with the registry the master has mapped, and says so.
    signal(master, libc::SIGHUP);
    let events = nginx.wait_n(EventKind::MasterStart, 2);
    assert_eq!(events[1].started(), (StartKind::Reload, None));
    assert_eq!(events[1].generation(), 2);
    nginx.wait("the old generation's end", |ev| {
        ev.iter()
            .any(|e| e.is(EventKind::MasterExit) && e.generation() == 1)
    });
    nginx.wait_status("live=2 ");
    assert_eq!(
        nginx.stderr().matches(WARNING).count(),
        1,
        "{}",
        nginx.stderr()
    );
    assert_eq!(
        fs::read(&registry).unwrap(),
        vec![0u8; 4096],
        "left as it was"
    );

    // The file back in place, the next reload has nothing to say.
    fs::rename(&kept, &registry).unwrap();
    signal(master, libc::SIGHUP);
    nginx.wait_n(EventKind::MasterStart, 3);
    nginx.wait_status("live=2 ");
    assert_eq!(nginx.stderr().matches(WARNING).count(), 1);
    let seen = Observer::open(&registry).unwrap().snapshot();
    assert_eq!(seen.generations.iter().map(|g| g.id).max(), Some(3));
    signal(master, libc::SIGQUIT);
    nginx.wait_gone(master);
}
