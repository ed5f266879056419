//! Support for the process tests: real processes (`wm-probe`) driven over pipes,
//! registries in temporary directories, and cleanup that kills only what a test
//! started, by pid, even when the test fails.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub use nginx::json;
use tempfile::TempDir;
use worker_manager::{Counts, Event, EventKind, Options, Registry};

/// How long any single step may take before the test fails: generous (these are
/// shared 2-core machines), and only a bound against hanging forever.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The header fields that the bad-file tests overwrite.
#[derive(Debug, Clone, Copy)]
pub enum HeaderField {
    LayoutVersion,
    RecordSize,
    CapWorkers,
    CapEvents,
}

impl HeaderField {
    /// Its byte offset in the file: the header starts with `magic` (u64), then
    /// `layout_version`, `header_size`, `record_size`, `mutex_size`,
    /// `cap_generations`, `cap_workers` and `cap_events` (u32 each): see
    /// `docs/design.md` section 2 and `core/src/region/layout.rs`.
    pub const fn offset(self) -> u64 {
        match self {
            HeaderField::LayoutVersion => 8,
            HeaderField::RecordSize => 16,
            HeaderField::CapWorkers => 28,
            HeaderField::CapEvents => 32,
        }
    }
}

/// Overwrites `field` of the registry file at `path` with `value`.
pub fn patch_header(path: &Path, field: HeaderField, value: u32) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the registry for writing");
    file.write_all_at(&value.to_ne_bytes(), field.offset())
        .expect("patch the header");
}

/// A temporary directory on `/dev/shm` (tmpfs, as in production) holding a registry.
pub struct Scratch {
    dir: TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("wm-test-")
            .tempdir_in("/dev/shm")
            .expect("create a directory in /dev/shm");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn registry(&self) -> PathBuf {
        self.path("registry.wm")
    }

    /// Opens (creating it if needed) the registry with the default options.
    pub fn open(&self) -> Registry {
        Registry::open(self.registry(), &Options::default()).expect("open the registry")
    }

    /// `n` probes registered as workers `0..n` of `generation`.
    pub fn workers(&self, generation: u64, n: u32) -> Vec<Probe> {
        (0..n)
            .map(|i| {
                let mut probe = Probe::spawn(&self.registry());
                probe.worker(generation, i);
                probe
            })
            .collect()
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// A tmpfs mounted (as root) on a new directory for one test, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with `options` (such as `size=64k` or `ro`) on `dir`.
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root, as the test suite runs"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Sends SIGKILL to `pid` (a process this test started).
pub fn kill9(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Sweeps every 10 ms until a sweep reports an event of `kind` (time-based rules,
/// such as timeouts, are judged by the registry's own clock); returns every event
/// seen. Fails after `STEP_TIMEOUT`.
pub fn sweep_until(
    registry: &Registry,
    kind: worker_manager::EventKind,
) -> Vec<worker_manager::Event> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &worker_manager::Event| e.kind() == kind)
    {
        assert!(Instant::now() < deadline, "no {kind} reported");
        std::thread::sleep(Duration::from_millis(10));
        registry.sweep(|e| seen.push(*e)).expect("sweep");
    }
    seen
}

/// The counts of an event.
pub fn counts(prev: Option<u32>, mine: u32, next: Option<u32>) -> Counts {
    Counts { prev, mine, next }
}

/// Events one a line, for a failure message.
pub fn shown<'a>(events: impl IntoIterator<Item = &'a Event>) -> String {
    events.into_iter().map(|e| format!("{e}\n")).collect()
}

/// A child process killed (and reaped) when dropped, so that a failing test leaves
/// nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `wm-probe` process.
pub struct Probe {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub pid: u32,
    /// Every event handed to the probe's callbacks so far, in order.
    pub events: Vec<Event>,
    /// Processes the probe forked (an upgrade's new master), killed with it.
    adopted: Vec<u32>,
}

impl Probe {
    pub fn spawn(registry: &Path) -> Probe {
        Probe::spawn_args(registry, &[])
    }

    pub fn spawn_with_lock_timeout(registry: &Path, ms: u64) -> Probe {
        Probe::spawn_args(registry, &[&ms.to_string()])
    }

    /// A probe that kills itself with SIGKILL at crash point `point`
    /// (`POINT@EVENT`, see the core's `crash` module).
    pub fn spawn_crashing_at(registry: &Path, point: &str) -> Probe {
        Probe::spawn_env(registry, &[], Some(point))
    }

    fn spawn_args(registry: &Path, extra: &[&str]) -> Probe {
        Probe::spawn_env(registry, extra, None)
    }

    fn spawn_env(registry: &Path, extra: &[&str], crash_point: Option<&str>) -> Probe {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wm-probe"));
        if let Some(point) = crash_point {
            command.env("WM_CRASH_POINT", point);
        }
        let mut child = command
            .arg(registry)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn wm-probe");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        let mut probe = Probe {
            child,
            stdin,
            lines,
            pid,
            events: Vec::new(),
            adopted: Vec::new(),
        };
        let ready = probe.next_line();
        assert!(ready.starts_with("ready"), "probe did not start: {ready}");
        probe
    }

    fn next_line(&mut self) -> String {
        let line = self
            .lines
            .recv_timeout(STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("probe {} said nothing in {STEP_TIMEOUT:?}: {e}", self.pid));
        if line.starts_with('{') {
            let event = json::from_line(&line)
                .unwrap_or_else(|e| panic!("probe {} printed a bad event: {e}", self.pid));
            self.events.push(event);
        }
        line
    }

    /// Reads lines until one starts with `prefix`, which is returned.
    pub fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = self.next_line();
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to probe");
        self.stdin.flush().expect("flush probe stdin");
    }

    /// Runs a command: `Ok(rest of the ok line)` or `Err(message)`.
    pub fn cmd(&mut self, command: &str) -> Result<String, String> {
        self.send(command);
        loop {
            let line = self.next_line();
            if let Some(rest) = line.strip_prefix("ok") {
                return Ok(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("err ") {
                return Err(rest.to_string());
            }
        }
    }

    /// Runs a command that must succeed.
    pub fn ok(&mut self, command: &str) -> String {
        self.cmd(command)
            .unwrap_or_else(|e| panic!("{command:?} failed in probe {}: {e}", self.pid))
    }

    /// Registers a generation (this probe is its master).
    pub fn generation(&mut self) -> u64 {
        self.ok("gen").parse().unwrap()
    }

    /// Registers this probe as a worker; returns its id.
    pub fn worker(&mut self, generation: u64, index: u32) -> String {
        self.ok(&format!("worker {generation} {index}"))
    }

    /// Forks a new master that registers a generation as a binary upgrade; returns
    /// (generation, new master pid).
    pub fn upgrade(&mut self) -> (u64, u32) {
        let reply = self.ok("upgrade");
        let mut words = reply.split_whitespace();
        let generation = words.next().unwrap().parse().unwrap();
        let pid = words.next().unwrap().parse().unwrap();
        self.adopted.push(pid);
        (generation, pid)
    }

    /// The events seen so far whose kind is `kind`.
    pub fn events_of(&self, kind: EventKind) -> Vec<&Event> {
        self.events.iter().filter(|e| e.kind() == kind).collect()
    }

    /// The only event of `kind` seen so far; fails if there is none, or more.
    pub fn one(&self, kind: EventKind) -> &Event {
        match self.events_of(kind)[..] {
            [e] => e,
            _ => panic!(
                "probe {}: not one {kind}:\n{}",
                self.pid,
                shown(&self.events)
            ),
        }
    }

    /// The events seen so far, one a line, for a failure message.
    pub fn shown(&self) -> String {
        shown(&self.events)
    }

    /// Runs a command during which the probe must die by SIGKILL (a crash point);
    /// reaps it.
    pub fn dies_doing(&mut self, command: &str) {
        self.send(command);
        let deadline = Instant::now() + STEP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the probe") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "probe {} survived {command:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "probe {}: {status}",
            self.pid
        );
    }

    /// SIGKILL, and reap it, so that its pid is really gone.
    pub fn kill9(&mut self) {
        kill9(self.pid);
        let _ = self.child.wait();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        for &pid in &self.adopted {
            kill9(pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
pub mod nginx;
