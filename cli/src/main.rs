//! `worker-manager`: a node's generations, workers, events and metrics, read from
//! outside the server. Read-only: the registry is mapped without write access and
//! its lock is never taken (see `docs/design.md` section 7).
//!
//! Except the operator verbs, `reload` and `upgrade` (`operate.rs`), which act on
//! the server and say so: they signal the master the registry names (SIGHUP; SIGUSR2,
//! SIGWINCH and SIGQUIT) and wait for nginx's verdict on the configuration. They too
//! only read the registry; they take a lock of their own beside it, so that two of
//! them never act on one node at once.

#![forbid(unsafe_code)]

mod errorlog;
mod events;
mod operate;
mod status;
mod text;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use worker_manager::{exposition, naming, Error, Observer};

/// Exit codes, documented in `worker-manager --help` and the README.
mod exit {
    pub const OK: u8 = 0;
    /// Anything else: output could not be written, the followed file was replaced.
    pub const FAILURE: u8 = 1;
    /// Bad arguments (clap's own code).
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const UNREADABLE: u8 = 4;
    pub const INCOMPATIBLE: u8 = 5;
    /// `reload`, `upgrade`: refused before any signal; nginx was not touched.
    pub const REFUSED: u8 = 6;
    /// `reload`, `upgrade`: nginx rejected or gave up the configuration; the old
    /// one serves on.
    pub const REJECTED: u8 = 7;
    /// `reload`, `upgrade`: no verdict within `--timeout`.
    pub const TIMEOUT: u8 = 8;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success (reload, upgrade: nginx committed the configuration and its workers
     started)
  1  other failure (output could not be written; the followed registry was
     replaced; the master exited during a reload or upgrade)
  2  bad arguments
  3  no registry at the path (is the server running with this prefix and name?)
  4  the registry cannot be read: permission, symlink, not a regular file,
     truncated or not initialised
  5  the registry is not one this build reads: foreign file, or another layout
     version
  6  reload, upgrade: refused before signalling (master gone, pid file disagrees,
     two masters, a reload or upgrade already in flight or running); nginx was not
     touched
  7  reload, upgrade: nginx rejected or gave up the configuration; the old one
     serves on (upgrade: the new master was stopped)
  8  reload, upgrade: no verdict within --timeout";

/// Reads a worker-manager registry: the generations and workers of an nginx (or any
/// pre-fork server) node, its event journal, and Prometheus metrics. Never writes
/// the registry and never waits on the server's lock. The operator verbs `reload`
/// and `upgrade` act on nginx: they signal its master and wait for its verdict.
#[derive(Debug, Parser)]
#[command(name = "worker-manager", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generations and workers, as a table or as JSON.
    Status {
        #[command(flatten)]
        registry: Location,
        /// JSON (schema in docs/cli.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The event journal, oldest first.
    Events {
        #[command(flatten)]
        registry: Location,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// After the journal, print new events as they happen, until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Prometheus text exposition (format 0.0.4).
    Metrics {
        #[command(flatten)]
        registry: Location,
    },
    /// Acts on nginx: reloads its configuration and waits for nginx's verdict.
    ///
    /// Sends SIGHUP to the master the registry names, as `nginx -s reload` does, then
    /// waits: exit 0 once the new configuration is committed and its workers
    /// started; 7 when nginx rejects it or gives it up (the old one serves on), with
    /// nginx's error lines; 8 when no verdict comes in time. Refuses before any
    /// signal (6) when the registry's master is gone, the pid file names another, or
    /// a reload is already in flight.
    #[command(after_help = EXIT_CODES)]
    Reload {
        #[command(flatten)]
        registry: Location,
        #[command(flatten)]
        operate: OperateArgs,
    },
    /// Acts on nginx: binary upgrade, the old master kept until the new one serves.
    ///
    /// Sends SIGUSR2 to the master the registry names; once the new master's
    /// configuration is committed and its workers started, SIGWINCH and SIGQUIT to
    /// the old master. A new master that fails, or is not ready in time, is stopped
    /// and the old one serves on. nginx must have been started by its absolute path.
    #[command(after_help = EXIT_CODES)]
    Upgrade {
        #[command(flatten)]
        registry: Location,
        #[command(flatten)]
        operate: OperateArgs,
    },
}

/// The options of the operator verbs.
#[derive(Debug, Args)]
struct OperateArgs {
    /// How long to wait for nginx's verdict (for an upgrade: each of its steps), in
    /// seconds. nginx retries a busy port for about 2.5 s before it gives a
    /// configuration up.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    timeout: Duration,
    /// nginx's pid file: act on the master it names, which must be one the registry
    /// names (the way to choose while a binary upgrade leaves two masters).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// nginx's error log, whose lines since the signal are shown. Default: the file
    /// the master's stderr is, where nginx keeps its error log.
    #[arg(long, value_name = "FILE")]
    error_log: Option<PathBuf>,
    /// One JSON object (schema in docs/cli.md) at the end instead of text.
    #[arg(long)]
    json: bool,
}

impl OperateArgs {
    fn options(&self) -> operate::Options {
        operate::Options {
            timeout: self.timeout,
            pid_file: self.pid_file.clone(),
            error_log: self.error_log.clone(),
            json: self.json,
        }
    }
}

/// A positive, finite number of seconds, at most a day.
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "{text} seconds: give more than 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where the registry is: a file, or the nginx prefix and `shm` name that the Lua
/// module derives its default path from.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
struct Location {
    /// The registry file (the Lua `path` option).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prefix", "shm"])]
    path: Option<PathBuf>,
    /// The nginx prefix (`nginx -p`, or its compiled-in --prefix), as nginx reports
    /// it; a trailing slash is added when missing.
    #[arg(long, value_name = "DIR", requires = "shm")]
    prefix: Option<String>,
    /// The Lua `shm` option.
    #[arg(long, value_name = "NAME", requires = "prefix", value_parser = shm_name)]
    shm: Option<String>,
    /// The Lua subsystem whose registry to read, with --prefix and --shm: each has
    /// its own.
    #[arg(long, value_enum, default_value_t = Subsystem::Http, requires = "shm")]
    subsystem: Subsystem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Subsystem {
    Http,
    Stream,
}

impl Subsystem {
    fn as_str(self) -> &'static str {
        match self {
            Subsystem::Http => "http",
            Subsystem::Stream => "stream",
        }
    }
}

fn shm_name(name: &str) -> Result<String, String> {
    naming::check_name(name)
        .map(|()| name.to_string())
        .map_err(|reason| format!("a shm name {reason}"))
}

impl Location {
    fn path(&self) -> PathBuf {
        match (&self.path, &self.prefix, &self.shm) {
            (Some(path), _, _) => path.clone(),
            (None, Some(prefix), Some(shm)) => {
                let mut prefix = prefix.clone();
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                naming::default_path(&prefix, shm, self.subsystem.as_str())
            }
            // clap requires one of the two forms.
            _ => unreachable!("clap enforces --path or --prefix with --shm"),
        }
    }

    fn describe(&self) -> String {
        match (&self.prefix, &self.shm) {
            (Some(prefix), Some(shm)) => format!(
                " (from --prefix {prefix} --shm {shm} --subsystem {})",
                self.subsystem.as_str()
            ),
            _ => String::new(),
        }
    }

    fn open(&self) -> Result<Observer, Failure> {
        let path = self.path();
        Observer::open(&path).map_err(|e| Failure::open(e, &self.describe()))
    }
}

/// A failure to report: its exit code and message.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn open(e: Error, origin: &str) -> Failure {
        let code = match &e {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => exit::NOT_FOUND,
            Error::ForeignMagic { .. }
            | Error::NewerLayout { .. }
            | Error::OlderLayout { .. }
            | Error::Incompatible { .. } => exit::INCOMPATIBLE,
            _ => exit::UNREADABLE,
        };
        let message = match &e {
            Error::Io { path, .. } if code == exit::NOT_FOUND => format!(
                "no registry at {}{origin}: is the server running with this prefix and shm name, or with this path?",
                path.display()
            ),
            _ => format!("{e}{origin}"),
        };
        Failure { code, message }
    }
}

/// The outcome of writing output. A reader that went away (`| head`) ends the
/// command quietly, with success.
fn written(result: io::Result<()>) -> Result<(), Failure> {
    result.map_err(|e| match e.kind() {
        io::ErrorKind::BrokenPipe => Failure {
            code: exit::OK,
            message: String::new(),
        },
        _ => Failure {
            code: exit::FAILURE,
            message: format!("cannot write the output: {e}"),
        },
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Status { registry, json } => {
            let observer = registry.open()?;
            let snapshot = observer.snapshot();
            if !snapshot.consistent {
                eprintln!("worker-manager: {}", status::inconsistency(&snapshot));
            }
            if json {
                status::json(&mut out, &observer, &snapshot)
            } else {
                status::table(&mut out, &observer, &snapshot)
            }
        }
        Command::Events {
            registry,
            json,
            follow,
        } => {
            let observer = registry.open()?;
            return events::print(&mut out, &observer, json, follow);
        }
        Command::Metrics { registry } => {
            let observer = registry.open()?;
            let text = exposition::prometheus(&observer.snapshot(), observer.path());
            out.write_all(text.as_bytes())
        }
        Command::Reload { registry, operate } => {
            return operate::run(
                &mut out,
                operate::Verb::Reload,
                &registry,
                &operate.options(),
            );
        }
        Command::Upgrade { registry, operate } => {
            return operate::run(
                &mut out,
                operate::Verb::Upgrade,
                &registry,
                &operate.options(),
            );
        }
    };
    written(result.and_then(|()| out.flush()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) if f.code == exit::OK => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("worker-manager: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
