//! The CLI against registry files that are missing, unreadable, truncated, foreign
//! or of another layout version, and against a good one that it must not change.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cli, cli_on, parse_exposition, sample, Run};
use tempfile::TempDir;
use worker_manager::{naming, GenerationConfig, Options, Registry};

fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("wm-cli-")
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// A registry with one generation, registered by this process.
fn registry(dir: &Path) -> PathBuf {
    let path = dir.join("registry.wm");
    let registry = Registry::open(&path, &Options::default()).unwrap();
    registry
        .register_generation(&GenerationConfig::default(), |_| {})
        .unwrap();
    path
}

/// Every command fails on `path` with `code` and a message containing `words`.
fn refused(path: &Path, code: i32, words: &str) {
    for command in ["status", "events", "metrics"] {
        let run = cli_on(command, path, &[]);
        assert_eq!(run.code, code, "{command}: {run:?}");
        assert!(run.stdout.is_empty(), "{command}: {run:?}");
        assert!(
            run.stderr.contains(words) && run.stderr.contains(path.to_str().unwrap()),
            "{command}: {run:?}"
        );
    }
}

fn patched(dir: &Path, name: &str, offset: usize, bytes: &[u8]) -> PathBuf {
    let good = registry(dir);
    let mut data = fs::read(&good).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    let path = dir.join(name);
    fs::write(&path, data).unwrap();
    path
}

#[test]
fn a_missing_registry_exits_3_and_names_where_it_looked() {
    let dir = scratch();
    refused(&dir.path().join("none.wm"), 3, "no registry at");
    // The prefix and name form derives the path as the Lua module does.
    let prefix = dir.path().to_str().unwrap();
    let expected = naming::default_path(&format!("{prefix}/"), "nothere", "http");
    let run = cli(&["status", "--prefix", prefix, "--shm", "nothere"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains(expected.to_str().unwrap()) && run.stderr.contains("--shm nothere"),
        "{run:?}"
    );
    assert!(!expected.exists(), "the CLI never creates a registry");
}

#[test]
fn unreadable_files_exit_4() {
    let dir = scratch();
    let empty = dir.path().join("empty.wm");
    fs::write(&empty, b"").unwrap();
    refused(&empty, 4, "not initialised");

    let zeros = dir.path().join("zeros.wm");
    fs::write(&zeros, vec![0u8; 300_000]).unwrap();
    refused(&zeros, 4, "not initialised");

    let good = registry(dir.path());
    let truncated = dir.path().join("truncated.wm");
    fs::write(&truncated, &fs::read(&good).unwrap()[..10_000]).unwrap();
    refused(&truncated, 4, "truncated");
    let tiny = dir.path().join("tiny.wm");
    fs::write(&tiny, b"WMREG").unwrap();
    refused(&tiny, 4, "truncated");

    let link = dir.path().join("link.wm");
    symlink(&good, &link).unwrap();
    refused(&link, 4, "symbolic link");

    refused(dir.path(), 4, "not a regular file");
}

#[test]
fn a_registry_the_user_cannot_read_exits_4() {
    let dir = scratch();
    let good = registry(dir.path());
    fs::set_permissions(&good, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The CLI, copied where another user may run it, run as nobody. Copied by
    // another process: a file this one held open for writing could be inherited by a
    // child another test thread forks meanwhile, and executing it would then fail
    // with "Text file busy".
    let exe = dir.path().join("worker-manager");
    let installed = common::output(
        Command::new("install")
            .args(["-m", "0755", common::CLI])
            .arg(&exe),
    );
    assert!(installed.status.success(), "install: {installed:?}");
    let run: Run = common::output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args(["status", "--path"])
            .arg(&good),
    )
    .into();
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("Permission denied"), "{run:?}");
}

#[test]
fn foreign_and_other_layout_files_exit_5() {
    let dir = scratch();
    let foreign = dir.path().join("foreign.wm");
    fs::write(&foreign, b"GIF89a".repeat(50_000)).unwrap();
    refused(&foreign, 5, "not a worker-manager registry");
    // The layout version is the u32 at offset 8.
    let newer = patched(dir.path(), "newer.wm", 8, &99u32.to_ne_bytes());
    refused(&newer, 5, "layout version 99");
    refused(&newer, 5, "upgrade");
    let older = patched(dir.path(), "older.wm", 8, &0u32.to_ne_bytes());
    refused(&older, 5, "remove it");
    // The record size (offset 16) of another build.
    let other = patched(dir.path(), "other.wm", 16, &256u32.to_ne_bytes());
    refused(&other, 5, "record size");
}

#[test]
fn bad_arguments_exit_2_with_an_error() {
    for args in [
        &["status"][..],
        &["status", "--shm", "x"],
        &["status", "--prefix", "/x"],
        &["status", "--path", "/x", "--shm", "y", "--prefix", "/z"],
        &["status", "--prefix", "/x", "--shm", "a/b"],
        &["frobnicate"],
        &["events", "--path", "/x", "--since", "3"],
    ] {
        let run = cli(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error:"), "{args:?}: {run:?}");
    }
    let help = cli(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Exit codes"), "{help:?}");
}

#[test]
fn reading_a_registry_changes_nothing_and_reports_what_it_holds() {
    let dir = scratch();
    let path = registry(dir.path());
    let before = fs::read(&path).unwrap();

    let status = cli_on("status", &path, &["--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["consistent"], true);
    assert_eq!(json["registry"]["size_bytes"], before.len() as u64);
    assert_eq!(json["node_run"]["state"], "running");
    let generations = json["generations"].as_array().unwrap();
    assert_eq!(generations.len(), 1);
    assert_eq!(generations[0]["kind"], "start");
    assert_eq!(generations[0]["state"], "starting");
    assert_eq!(generations[0]["master_pid"], std::process::id());
    assert_eq!(generations[0]["master_alive"], true);
    assert!(json["workers"].as_array().unwrap().is_empty());
    assert_eq!(json["next_seq"], 2);

    let table = cli_on("status", &path, &[]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("GENERATION"), "{}", table.stdout);
    assert!(table.stdout.contains("no workers"), "{}", table.stdout);

    let events = cli_on("events", &path, &["--json"]);
    assert_eq!(events.code, 0, "{events:?}");
    let lines: Vec<serde_json::Value> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"], "master_start");
    assert_eq!(lines[0]["kind"], "start");
    assert_eq!(lines[0]["n_prev"], serde_json::Value::Null);
    let text = cli_on("events", &path, &[]);
    assert!(text.stdout.contains("#1 master_start"), "{text:?}");

    let metrics = cli_on("metrics", &path, &[]);
    assert_eq!(metrics.code, 0, "{metrics:?}");
    let samples = parse_exposition(&metrics.stdout);
    assert_eq!(
        sample(&samples, "worker_manager_generations_total{kind=\"start\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "worker_manager_events_total{event=\"master_start\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&samples, "worker_manager_snapshot_consistent{}"),
        1.0
    );

    assert!(
        fs::read(&path).unwrap() == before,
        "the CLI wrote to the registry"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let dir = scratch();
    let path = registry(dir.path());
    let mut child = common::spawn(
        Command::new(common::CLI)
            .args(["events", "--follow", "--path"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    // Read the first line, then close the pipe; the next event makes the CLI write
    // into the closed pipe. Meanwhile no other test starts a child, which would hold
    // a copy of the pipe's read end until its exec.
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
    assert!(first.contains("master_start"), "{first}");
    let _no_spawn = common::no_spawn();
    let registry = Registry::open(&path, &Options::default()).unwrap();
    registry
        .register_generation(&GenerationConfig::default(), |_| {})
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn a_registry_of_an_earlier_boot_is_read_and_said_to_be_stale() {
    let dir = scratch();
    // The boot id is the pair of u64 at offset 56.
    let stale = patched(dir.path(), "stale.wm", 56, &[0x5a; 16]);
    let json: serde_json::Value =
        serde_json::from_str(&cli_on("status", &stale, &["--json"]).stdout).unwrap();
    assert_eq!(json["registry"]["previous_boot"], true);
    let table = cli_on("status", &stale, &[]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("before the last reboot"), "{table:?}");
}
