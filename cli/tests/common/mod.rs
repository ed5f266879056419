//! Support for the CLI tests: running the real `worker-manager` binary, parsing its
//! metrics with a real Prometheus parser, and the real-nginx harness of the process
//! tests.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How long any single step may take before a test fails (as in the process tests).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[path = "../../../tests/tests/common/nginx.rs"]
pub mod nginx;

pub const CLI: &str = env!("CARGO_BIN_EXE_worker-manager");

/// What a run of the CLI printed, and its exit code.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().expect("the CLI exited, not killed"),
            stdout: String::from_utf8(o.stdout).expect("UTF-8 output"),
            stderr: String::from_utf8(o.stderr).expect("UTF-8 errors"),
        }
    }
}

/// Held while a test of this process starts a child. Between its fork and its exec a
/// child holds a copy of every descriptor of this process, other tests' pipes
/// included: a test that needs its pipe to have no reader left (a CLI writing into a
/// closed pipe) holds it while it checks.
static SPAWN: Mutex<()> = Mutex::new(());

/// No child of this process is between its fork and its exec while this is held.
pub fn no_spawn() -> MutexGuard<'static, ()> {
    SPAWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts `command`, while no other child is started through here (the tests of
/// `files.rs` start all theirs so).
pub fn spawn(command: &mut Command) -> Child {
    let _held = no_spawn();
    command
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"))
}

/// Runs `command` to its end.
pub fn output(command: &mut Command) -> Output {
    spawn(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .wait_with_output()
    .expect("wait for a child")
}

/// Runs `worker-manager ARGS`.
pub fn cli(args: &[&str]) -> Run {
    output(Command::new(CLI).args(args)).into()
}

/// Runs `worker-manager SUBCOMMAND --path PATH EXTRA...`.
pub fn cli_on(subcommand: &str, path: &Path, extra: &[&str]) -> Run {
    let path = path.to_str().unwrap();
    let mut args = vec![subcommand, "--path", path];
    args.extend_from_slice(extra);
    cli(&args)
}

/// Parses `text` with the official Prometheus Python client's parser
/// (Debian's python3-prometheus-client) and returns one line per sample,
/// `name{label="v",...} value`, labels sorted. Fails on a parse error and on a
/// sample outside the family its `# TYPE` declared (which the parser reports as an
/// `unknown` family).
pub fn parse_exposition(text: &str) -> Vec<String> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    if family.type == "unknown":
        sys.exit("sample outside a declared family: %s" % family.name)
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
"#;
    use std::io::Write;
    // /usr/bin/python3 with python3-prometheus-client, which `make deps` installs.
    let mut child = spawn(
        Command::new("/usr/bin/python3")
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The value of the sample written exactly as `series` (`name{labels}`, labels
/// sorted) among parsed samples.
pub fn sample(samples: &[String], series: &str) -> f64 {
    samples
        .iter()
        .find_map(|s| s.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in {samples:#?}"))
}
