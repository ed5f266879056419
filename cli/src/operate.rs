//! The operator verbs `worker-manager reload` and `worker-manager upgrade`. Unlike
//! the other commands they act on the server: they signal the master the registry
//! names, then wait for nginx's verdict on the configuration, which the registry
//! records (`docs/design.md` 4.6) and nginx's error log explains.
//!
//! Nothing is signalled that the registry does not name, and every signal goes to
//! the very process the registry recorded (pid and start time, through a pidfd).
//! Refusals come before any signal. `reload` sends only SIGHUP, as `nginx -s reload`
//! does; `upgrade` stops only the new master it started, when it failed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use worker_manager::{
    AbortCause, Detail, Error, Event, GenerationInfo, GenerationState, Identity, Observer,
    OperatorLock, Signal, Snapshot, StartKind,
};

use crate::errorlog::{Level, Line, Tail};
use crate::{exit, Failure, Location};

/// How often a wait looks at what does not wake it (nginx's error log, processes
/// that exit); events in the registry wake it at once.
const POLL: Duration = Duration::from_millis(40);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Reload,
    Upgrade,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Reload => "reload",
            Verb::Upgrade => "upgrade",
        }
    }
}

#[derive(Debug)]
pub struct Options {
    /// Bound of each wait.
    pub timeout: Duration,
    pub pid_file: Option<PathBuf>,
    pub error_log: Option<PathBuf>,
    pub json: bool,
}

/// A master the registry names, and the newest configuration it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Master {
    identity: Identity,
    generation: u64,
}

fn master_of(g: &GenerationInfo) -> Identity {
    Identity {
        pid: g.master_pid,
        start_time: g.master_start_time,
    }
}

/// A configuration nginx took and that has not ended.
fn serves(g: &GenerationInfo) -> bool {
    g.committed.is_some()
        && matches!(
            g.state,
            Some(GenerationState::Starting | GenerationState::Running | GenerationState::Draining)
        )
}

/// The masters of the configurations that serve, newest first, each once: the live
/// one (found through its workers when the recorded one was nginx's pre-daemon
/// process), else the recorded one, gone.
fn masters(s: &Snapshot) -> Vec<Master> {
    let mut out: Vec<Master> = Vec::new();
    for g in s.generations.iter().rev().filter(|g| serves(g)) {
        let identity = s.live_master(g).unwrap_or_else(|| master_of(g));
        if out.iter().all(|m| m.identity != identity) {
            out.push(Master {
                identity,
                generation: g.id,
            });
        }
    }
    out
}

fn pids(masters: &[Master]) -> String {
    let pids: Vec<String> = masters.iter().map(|m| m.identity.pid.to_string()).collect();
    match pids.len() {
        1 => format!("master is {}", pids[0]),
        _ => format!("masters are {}", pids.join(" and ")),
    }
}

/// The master to signal: the newest serving configuration's, or the one the pid file
/// names; an error saying why none may be.
fn choose(
    masters: &[Master],
    pid_file: Option<(&Path, u32)>,
    alive: impl Fn(&Identity) -> bool,
    registry: &Path,
) -> Result<Master, String> {
    let Some(newest) = masters.first() else {
        return Err(format!(
            "registry {} names no configuration that serves: is nginx running with this registry?",
            registry.display()
        ));
    };
    let gone = |m: &Master| {
        format!(
            "the master of generation {}, pid {}, is gone (it exited, or its pid now belongs to another process): nginx is not running as registry {} last saw it; start it, or check the registry's location",
            m.generation,
            m.identity.pid,
            registry.display()
        )
    };
    if let Some((file, pid)) = pid_file {
        let Some(named) = masters.iter().find(|m| m.identity.pid == pid) else {
            return Err(format!(
                "pid file {} says {pid} but the registry's {}: the pid file is stale or belongs to another nginx; check --pid-file and the registry's location",
                file.display(),
                pids(masters)
            ));
        };
        return if alive(&named.identity) {
            Ok(*named)
        } else {
            Err(gone(named))
        };
    }
    if !alive(&newest.identity) {
        return Err(gone(newest));
    }
    let others: Vec<String> = masters[1..]
        .iter()
        .filter(|m| alive(&m.identity))
        .map(|m| format!("{} (generation {})", m.identity.pid, m.generation))
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "two masters are live, {} (generation {}) and {}: a binary upgrade is in progress; finish it (SIGQUIT to the old master) or name the master with --pid-file",
            newest.identity.pid,
            newest.generation,
            others.join(", ")
        ));
    }
    Ok(*newest)
}

/// A configuration newer than `serving` that nginx has not given its verdict on, with
/// a live master: a reload or upgrade in flight.
fn in_flight(
    s: &Snapshot,
    serving: u64,
    alive: impl Fn(&Identity) -> bool,
) -> Option<&GenerationInfo> {
    s.generations.iter().find(|g| {
        g.id > serving
            && g.committed.is_none()
            && g.state == Some(GenerationState::Starting)
            && alive(&master_of(g))
    })
}

/// Why `verb` may not act on `master` while a binary upgrade leaves another master
/// live: nginx answers SIGHUP to an old master whose new binary runs by starting its
/// old workers again (the way back from an upgrade), not by reloading, and ignores
/// SIGUSR2 until the old master has quit.
fn upgrading(masters: &[Master], master: Master, verb: Verb) -> Option<String> {
    let mut others = masters
        .iter()
        .filter(|m| m.identity != master.identity && m.identity.is_alive());
    let pid = master.identity.pid;
    match verb {
        Verb::Reload => others
            .find(|m| m.identity.parent() == Some(pid))
            .map(|child| {
                format!(
                    "master {pid} has started a new binary, master {} (generation {}), which still runs: nginx would answer SIGHUP by starting {pid}'s old workers again, not by reloading; finish the upgrade (SIGQUIT to {pid}) or roll it back (SIGQUIT to {}) first",
                    child.identity.pid, child.generation, child.identity.pid
                )
            }),
        Verb::Upgrade => others
            .next()
            .map(|other| {
                format!(
                    "a binary upgrade is in progress: masters {pid} and {} are live, and nginx ignores SIGUSR2 until one of them has quit; finish it (SIGQUIT to the old master) or roll it back (SIGQUIT to the new one) first",
                    other.identity.pid
                )
            })
            .or_else(|| {
                // The old master of a finished upgrade whose workers are gone is
                // no longer in the registry, but nginx still waits for it.
                let parent = master.identity.parent()?;
                started_as(parent).map(|_| {
                    format!(
                        "master {pid} came from a binary upgrade of master {parent}, which still runs: nginx ignores SIGUSR2 until it has quit; send {parent} SIGQUIT first"
                    )
                })
            }),
    }
}

/// The pid a pid file holds.
fn read_pid_file(path: &Path) -> Result<u32, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read pid file {}: {e}", path.display()))?;
    text.trim().parse().map_err(|_| {
        format!(
            "pid file {} holds no pid: {:?}",
            path.display(),
            text.trim()
        )
    })
}

/// How nginx was started, from its title (`nginx: master process /usr/sbin/nginx
/// ...`): the path it re-executes for a binary upgrade. `None` when the title says
/// nothing of it.
fn started_as(pid: u32) -> Option<String> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let title = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let argv = title.strip_prefix("nginx: master process ")?;
    argv.split_whitespace().next().map(str::to_string)
}

/// What the operation went through, printed as it happens (text) and kept for the
/// JSON. Output that cannot be written is not a reason to stop half-way through an
/// operation on the server: the exit code still tells the verdict.
struct Report<'o, W: Write> {
    out: &'o mut W,
    verb: Verb,
    json: bool,
    started: Instant,
    steps: Vec<(Duration, String)>,
    master: Option<u32>,
    previous: Option<u64>,
    error_log: Option<PathBuf>,
}

impl<W: Write> Report<'_, W> {
    fn step(&mut self, text: String) {
        let at = self.started.elapsed();
        if !self.json {
            let _ = writeln!(self.out, "{:7.3}s {text}", at.as_secs_f64());
            let _ = self.out.flush();
        }
        self.steps.push((at, text));
    }
}

/// How an operation ended.
#[derive(Debug)]
struct Outcome {
    /// `committed`, `failed`, `rejected`, `timeout`, `refused` or `error`.
    verdict: &'static str,
    code: u8,
    /// The last word: what serves now, or what went wrong and what to do.
    message: String,
    generation: Option<u64>,
    new_master: Option<u32>,
    /// The lines of nginx's error log worth showing, from the processes involved.
    log: Vec<String>,
}

impl Outcome {
    /// The log is added at the end, once every process involved is known.
    fn new(
        verdict: &'static str,
        code: u8,
        message: String,
        generation: Option<u64>,
        new_master: Option<u32>,
    ) -> Outcome {
        Outcome {
            verdict,
            code,
            message,
            generation,
            new_master,
            log: Vec::new(),
        }
    }

    fn refused(failure: Failure) -> Outcome {
        Outcome {
            verdict: "refused",
            code: failure.code,
            message: failure.message,
            generation: None,
            new_master: None,
            log: Vec::new(),
        }
    }
}

fn refusal(message: String) -> Failure {
    Failure {
        code: exit::REFUSED,
        message,
    }
}

/// Runs `verb` and reports it: text as it happens, or one JSON object at the end.
pub fn run(
    out: &mut impl Write,
    verb: Verb,
    registry: &Location,
    options: &Options,
) -> Result<(), Failure> {
    let mut report = Report {
        out,
        verb,
        json: options.json,
        started: Instant::now(),
        steps: Vec::new(),
        master: None,
        previous: None,
        error_log: None,
    };
    let outcome = attempt(&mut report, registry, options).unwrap_or_else(Outcome::refused);
    let elapsed = report.started.elapsed();
    if options.json {
        let steps: Vec<Value> = report
            .steps
            .iter()
            .map(|(at, text)| json!({ "elapsed_seconds": at.as_secs_f64(), "step": text }))
            .collect();
        let object = json!({
            "schema": 1,
            "command": verb.as_str(),
            "verdict": outcome.verdict,
            "exit_code": outcome.code,
            "registry": registry.path().display().to_string(),
            "master_pid": report.master,
            "previous_generation": report.previous,
            "generation": outcome.generation,
            "new_master_pid": outcome.new_master,
            "elapsed_seconds": elapsed.as_secs_f64(),
            "cause": (outcome.code != exit::OK).then_some(&outcome.message),
            "error_log": report.error_log.as_ref().map(|p| p.display().to_string()),
            "log": outcome.log,
            "steps": steps,
        });
        let _ = serde_json::to_writer(&mut *report.out, &object);
        let _ = writeln!(report.out);
    } else {
        if !outcome.log.is_empty() {
            let from = report
                .error_log
                .as_ref()
                .map_or(String::new(), |p| format!(" ({})", p.display()));
            let _ = writeln!(report.out, "nginx's error log since the signal{from}:");
            for line in &outcome.log {
                let _ = writeln!(report.out, "  {line}");
            }
        }
        if outcome.code == exit::OK {
            let _ = writeln!(report.out, "{}", outcome.message);
        }
    }
    let _ = report.out.flush();
    if outcome.code == exit::OK {
        Ok(())
    } else {
        Err(Failure {
            code: outcome.code,
            message: format!("{} {}: {}", verb.as_str(), outcome.verdict, outcome.message),
        })
    }
}

/// Everything up to the first signal is a check that may refuse; then the verb.
fn attempt<W: Write>(
    report: &mut Report<'_, W>,
    registry: &Location,
    options: &Options,
) -> Result<Outcome, Failure> {
    let observer = registry.open()?;
    let path = observer.path().to_path_buf();
    let lock = match OperatorLock::try_acquire(&path) {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => {
            let holder = holder.map_or(String::new(), |pid| format!(" (pid {pid})"));
            return Err(refusal(format!(
                "another worker-manager reload or upgrade{holder} is acting on registry {}: wait for it to finish",
                path.display()
            )));
        }
        Err(e) => {
            return Err(refusal(format!(
                "cannot take the operators' lock: {e}: run as the registry's owner"
            )))
        }
    };
    let before = observer.snapshot();
    let pid_file = match &options.pid_file {
        Some(file) => Some((file.as_path(), read_pid_file(file).map_err(refusal)?)),
        None => None,
    };
    let alive = |id: &Identity| id.is_alive();
    let masters = masters(&before);
    let master = choose(&masters, pid_file, alive, &path).map_err(refusal)?;
    report.master = Some(master.identity.pid);
    report.previous = Some(master.generation);
    if let Some(why) = upgrading(&masters, master, report.verb) {
        return Err(refusal(why));
    }
    if let Some(g) = in_flight(&before, master.generation, alive) {
        return Err(refusal(format!(
            "generation {} ({}, master {}) is loading and nginx has not given its verdict yet: a reload or upgrade is already in flight; wait for it (worker-manager status shows it) and try again",
            g.id,
            g.kind.map_or("unknown kind", StartKind::as_str),
            g.master_pid
        )));
    }
    if report.verb == Verb::Upgrade {
        if let Some(argv0) = started_as(master.identity.pid).filter(|a| !a.starts_with('/')) {
            return Err(refusal(format!(
                "master {} was started as {argv0:?}, not by its absolute path: nginx re-executes that path for a binary upgrade, which would fail; restart nginx by its absolute path (for example /usr/sbin/nginx)",
                master.identity.pid
            )));
        }
    }
    let log = match &options.error_log {
        Some(file) => Some(
            Tail::open(file)
                .map_err(|e| refusal(format!("cannot read error log {}: {e}", file.display())))?,
        ),
        None => Tail::of_stderr(master.identity.pid).and_then(|p| Tail::open(&p).ok()),
    };
    report.error_log = log.as_ref().map(|t| t.path().to_path_buf());
    let log_note = report.error_log.as_ref().map_or_else(
        || "error log unknown (--error-log names it)".to_string(),
        |p| format!("error log {}", p.display()),
    );
    report.step(format!(
        "{}: master {} serves generation {}; {log_note}",
        report.verb.as_str(),
        master.identity.pid,
        master.generation
    ));
    let newest = before
        .generations
        .iter()
        .map(|g| g.id)
        .chain(before.verdict.map(|v| v.generation))
        .max()
        .unwrap_or(0);
    let mut op = Operation {
        report,
        observer: &observer,
        master,
        newest,
        timeout: options.timeout,
        next: observer.next_seq(),
        log,
        involved: vec![master.identity.pid],
    };
    let signal = match op.report.verb {
        Verb::Reload => Signal::Hup,
        Verb::Upgrade => Signal::Usr2,
    };
    op.send(master.identity, signal, "master")
        .map_err(refusal)?;
    let mut outcome = match op.report.verb {
        Verb::Reload => op.reload(),
        Verb::Upgrade => op.upgrade(),
    };
    outcome.log = op.shown(outcome.generation);
    drop(lock);
    Ok(outcome)
}

/// An operation under way: the master signalled, the journal and the log followed
/// from where they stood before the signal.
struct Operation<'r, 'o, W: Write> {
    report: &'r mut Report<'o, W>,
    observer: &'r Observer,
    master: Master,
    /// Generations up to this id existed before the signal.
    newest: u64,
    timeout: Duration,
    /// The next journal entry to read.
    next: u64,
    log: Option<Tail>,
    /// The processes whose log lines are shown: the master signalled, a new one.
    involved: Vec<u32>,
}

/// Where a wait for nginx's verdict got to.
enum Wait {
    /// The new configuration serves, with all its workers.
    Ready(u64),
    /// Something else, said in an outcome.
    Ended(Outcome),
}

impl<W: Write> Operation<'_, '_, W> {
    /// Sends `signal` to `whom` (its role, for the report), checked against its
    /// identity, and only if it handles it: nginx does from the end of its start,
    /// while a signal's default action would end a process that does not.
    fn send(&mut self, whom: Identity, signal: Signal, role: &str) -> Result<(), String> {
        if !whom.handles(signal) {
            return Err(format!(
                "{role} {} has no handler for {signal}, which would terminate it: is it nginx, and done starting? {signal} not sent",
                whom.pid
            ));
        }
        match whom.signal(signal) {
            Ok(()) => {
                self.report
                    .step(format!("sent {signal} to {role} {}", whom.pid));
                Ok(())
            }
            Err(e @ Error::Signal { .. }) => Err(format!(
                "{e}: run as root or as the user nginx's master runs as"
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sleeps until the registry journals an event or [`POLL`] passes (never past
    /// `deadline`), then reads the new events and the error log.
    fn wait(&mut self, deadline: Instant) -> Vec<Event> {
        let left = deadline.saturating_duration_since(Instant::now()).min(POLL);
        self.observer.wait_for_event(self.next, left);
        let events = self.observer.events_since(self.next);
        if let Some(last) = events.last() {
            self.next = last.seq + 1;
        }
        if let Some(log) = &mut self.log {
            log.read();
        }
        events
    }

    fn lines(&self) -> &[Line] {
        self.log.as_ref().map_or(&[], Tail::lines)
    }

    /// The log lines worth showing of the processes involved (the masters, a new
    /// binary, the workers of `generation`) and of nginx's stderr, but for the copies
    /// of log lines on stderr. Other workers' lines (the requests they serve) are not
    /// the operation's.
    fn shown(&self, generation: Option<u64>) -> Vec<String> {
        let mut pids = self.involved.clone();
        if let Some(id) = generation {
            let workers = self.observer.snapshot().workers;
            pids.extend(
                workers
                    .iter()
                    .filter(|w| w.id.generation == id)
                    .map(|w| w.id.pid),
            );
        }
        let mut shown: Vec<&Line> = Vec::new();
        for line in self.lines() {
            let echo = shown.last().is_some_and(|previous| line.echoes(previous));
            if line.is_worth_showing() && pids.iter().any(|&p| line.is_from(p)) && !echo {
                shown.push(line);
            }
        }
        shown.into_iter().map(|l| l.text.clone()).collect()
    }

    fn elapsed(&self) -> String {
        format!("{:.2}s", self.report.started.elapsed().as_secs_f64())
    }

    /// An `[emerg]` line of the log since the signal that `accept` takes.
    fn emerg(&self, accept: impl Fn(&Line) -> bool) -> Option<Line> {
        self.lines()
            .iter()
            .find(|l| l.level == Level::Emerg && accept(l))
            .cloned()
    }

    /// Whether a generation newer than the signal is the one it made: for a reload,
    /// the signalled master's; for an upgrade, a binary upgrade's of another master.
    fn is_ours(&self, kind: Option<StartKind>, master_pid: u32, upgrade: bool) -> bool {
        let old = self.master.identity.pid;
        if upgrade {
            kind == Some(StartKind::Upgrade) && master_pid != old
        } else {
            master_pid == old
        }
    }

    /// Waits for the generation the signal makes nginx register to be committed and
    /// to have started all its workers. For an upgrade, `new` receives the new
    /// master once the registry names it (a child of the old one), for the caller to
    /// stop should it fail.
    fn until_ready(&mut self, upgrade: bool, new: &mut Option<Identity>) -> Wait {
        let deadline = Instant::now() + self.timeout;
        let old = self.master.identity;
        let mut generation: Option<u64> = None;
        let mut aborted = None;
        let mut committed = false;
        loop {
            for e in self.wait(deadline) {
                match e.detail {
                    Detail::MasterStart {
                        kind, master_pid, ..
                    } if generation.is_none()
                        && e.generation > self.newest
                        && self.is_ours(Some(kind), master_pid, upgrade) =>
                    {
                        generation = Some(e.generation);
                    }
                    Detail::GenerationAbort { cause } if Some(e.generation) == generation => {
                        aborted = Some(cause);
                    }
                    _ => {}
                }
            }
            // Read after the log: nginx registers a configuration before it logs
            // anything about giving it up, so a registration is seen here by then.
            let s = self.observer.snapshot();
            let found = s
                .generations
                .iter()
                .find(|g| g.id > self.newest && self.is_ours(g.kind, g.master_pid, upgrade));
            if generation.is_none() {
                generation = found.map(|g| g.id);
            }
            let Some(id) = generation else {
                if let Some(line) = self.rejected(upgrade) {
                    // A generation registered (and given up) since the events were
                    // read is nginx's verdict, not a rejection: read on.
                    let registered = self.observer.events_since(self.next).iter().any(|e| {
                        matches!(e.detail, Detail::MasterStart { kind, master_pid, .. }
                            if e.generation > self.newest
                                && self.is_ours(Some(kind), master_pid, upgrade))
                    });
                    if !registered {
                        return Wait::Ended(self.rejection(line, upgrade));
                    }
                    continue;
                }
                if !old.is_alive() {
                    return Wait::Ended(self.master_gone(None));
                }
                if Instant::now() >= deadline {
                    return Wait::Ended(self.no_generation());
                }
                continue;
            };
            let record = s.generations.iter().find(|g| g.id == id);
            if id > self.newest {
                // First seen: said once.
                self.newest = id;
                match record.map(master_of) {
                    Some(m) if upgrade && m.is_alive() && m.parent() != Some(old.pid) => {
                        // Not the master the signal started: never touched.
                        generation = None;
                        continue;
                    }
                    Some(m) if upgrade => {
                        *new = Some(m);
                        self.involved.push(m.pid);
                        self.report.step(format!(
                            "new master {} registered generation {id} (upgrade)",
                            m.pid
                        ));
                    }
                    _ => self.report.step(format!("generation {id} registered")),
                }
            }
            let failed_verdict = s
                .verdict
                .is_some_and(|v| v.generation == id && !v.committed);
            let Some(g) = record.filter(|_| aborted.is_none() && !failed_verdict) else {
                return Wait::Ended(self.gave_up(id, aborted, new.map(|m| m.pid)));
            };
            if !committed && g.committed.is_some() {
                committed = true;
                self.report
                    .step(format!("generation {id} committed by nginx"));
            }
            let expected = u64::from(g.expected_workers.max(1));
            if committed && g.workers_started >= expected {
                self.report.step(match g.expected_workers {
                    0 => format!("generation {id}: its first worker started"),
                    n => format!("generation {id}: {n} of {n} workers started"),
                });
                return Wait::Ready(id);
            }
            // nginx's [emerg] is fatal: the new master will give its configuration
            // up (a port it cannot bind: after 2.5 s of retries) or exit.
            if let Some(m) = *new {
                let failure = match self.emerg(|l| l.pid == Some(m.pid)) {
                    Some(line) => Some(format!("failed: {}", line.text)),
                    None => (!m.is_alive())
                        .then(|| "exited before its configuration served".to_string()),
                };
                if let Some(what) = failure {
                    let message = format!("new master {} {what}", m.pid);
                    return Wait::Ended(Outcome::new(
                        "failed",
                        exit::REJECTED,
                        message,
                        Some(id),
                        Some(m.pid),
                    ));
                }
            }
            if !old.is_alive() {
                return Wait::Ended(self.master_gone(Some(id)));
            }
            if Instant::now() >= deadline {
                let message = if committed {
                    format!(
                        "generation {id} was committed, but only {} of its {} workers started within {:?}",
                        g.workers_started, g.expected_workers, self.timeout
                    )
                } else {
                    format!(
                        "generation {id} registered, but nginx gave no verdict on it within {:?} (still binding its ports? nginx retries a busy one for about 2.5 s)",
                        self.timeout
                    )
                };
                return Wait::Ended(Outcome::new(
                    "timeout",
                    exit::TIMEOUT,
                    message,
                    Some(id),
                    new.map(|m| m.pid),
                ));
            }
        }
    }

    /// nginx gave generation `id` up after it registered (`cause`, from the journal).
    fn gave_up(&self, id: u64, cause: Option<AbortCause>, new_master: Option<u32>) -> Outcome {
        let cause = cause.map_or_else(
            || "it left the registry without a verdict".to_string(),
            |c| format!("generation_abort, cause {c}"),
        );
        // nginx's own word: its first [emerg], else its first [error] or worse.
        let line = self
            .emerg(|_| true)
            .or_else(|| {
                self.lines()
                    .iter()
                    .find(|l| l.level <= Level::Error)
                    .cloned()
            })
            .map(|l| l.text);
        let why = line.map_or(String::new(), |l| format!(": {l}"));
        let message = format!(
            "nginx gave generation {id} up after {} ({cause}){why}",
            self.elapsed()
        );
        Outcome::new("failed", exit::REJECTED, message, Some(id), new_master)
    }

    /// An error-log line that says nginx rejected the configuration before it
    /// registered a generation: an `[emerg]` from the master (a reload's syntax
    /// error), or from anyone for an upgrade (the new binary writes to the log it
    /// inherited, with no pid), and an upgrade's signal nginx would not act on.
    fn rejected(&self, upgrade: bool) -> Option<Line> {
        let master = self.master.identity.pid;
        if !upgrade {
            return self.emerg(|l| l.is_from(master));
        }
        self.emerg(|_| true).or_else(|| {
            self.lines()
                .iter()
                .find(|l| {
                    l.pid == Some(master)
                        && (l.text.contains("execve() failed")
                            || (l.text.contains("new binary process") && l.text.contains("exited"))
                            || (l.text.contains("(SIGUSR2)") && l.text.ends_with("ignoring")))
                })
                .cloned()
        })
    }

    fn rejection(&mut self, line: Line, upgrade: bool) -> Outcome {
        let what = if upgrade {
            "the new binary did not start"
        } else {
            "nginx rejected the configuration before loading it"
        };
        let message = format!("{what} ({}): {}", self.elapsed(), line.text);
        // A new binary that failed this early is named by its log lines alone.
        self.involved.extend(line.pid);
        Outcome::new("rejected", exit::REJECTED, message, None, None)
    }

    /// No generation registered within the timeout, and the log (if known) said
    /// nothing fatal.
    fn no_generation(&self) -> Outcome {
        let message = match (&self.log, self.report.verb) {
            (None, Verb::Reload) => format!(
                "no new generation registered within {:?}: nginx most likely rejected the configuration before init_by_lua ran (a syntax error: `nginx -t` names it; --error-log shows nginx's message at once)",
                self.timeout
            ),
            (Some(_), Verb::Reload) => format!(
                "no new generation registered within {:?} and nginx logged no error (does the new configuration still call resty.worker.manager's on_init_by_lua?)",
                self.timeout
            ),
            (_, Verb::Upgrade) => format!(
                "no new master registered a generation within {:?} (nginx ignored the signal, or the new binary failed before init_by_lua: see its error log)",
                self.timeout
            ),
        };
        Outcome::new("timeout", exit::TIMEOUT, message, None, None)
    }

    /// What serves after a failure: the master signalled, unless it is gone too.
    fn serving(&self) -> String {
        let old = self.master;
        if old.identity.is_alive() {
            format!(
                "the old configuration serves on (generation {}, master {})",
                old.generation, old.identity.pid
            )
        } else {
            format!("master {} is gone too: nginx is down", old.identity.pid)
        }
    }

    fn master_gone(&self, generation: Option<u64>) -> Outcome {
        Outcome::new(
            "error",
            exit::FAILURE,
            format!(
                "master {} exited while nginx loaded the configuration: nginx is down; see its error log",
                self.master.identity.pid
            ),
            generation,
            None,
        )
    }

    fn reload(&mut self) -> Outcome {
        let mut none = None;
        match self.until_ready(false, &mut none) {
            Wait::Ended(mut outcome) => {
                if outcome.code != exit::FAILURE {
                    outcome.message = format!("{}; {}", outcome.message, self.serving());
                }
                outcome
            }
            Wait::Ready(id) => {
                let message = format!(
                    "reload committed: generation {id} serves (master {}, {})",
                    self.master.identity.pid,
                    self.elapsed()
                );
                Outcome::new("committed", exit::OK, message, Some(id), None)
            }
        }
    }

    /// nginx's binary upgrade: SIGUSR2; the new master's configuration committed and
    /// its workers started; then SIGWINCH and SIGQUIT to the old master. A new master
    /// that fails is stopped, and the old one serves on.
    fn upgrade(&mut self) -> Outcome {
        let old = self.master.identity;
        let mut new = None;
        let id = match self.until_ready(true, &mut new) {
            Wait::Ready(id) => id,
            Wait::Ended(outcome) => return self.undo(outcome, new),
        };
        let Some(new) = new else {
            unreachable!("a ready upgrade has a new master");
        };
        let s = self.observer.snapshot();
        let old_generations: Vec<u64> = s
            .generations
            .iter()
            .filter(|g| s.live_master(g) == Some(old))
            .map(|g| g.id)
            .collect();
        // The old workers stop; the old master stays, should the new one fail now.
        if let Err(e) = self.send(old, Signal::Winch, "old master") {
            let outcome = Outcome::new("error", exit::FAILURE, e, Some(id), Some(new.pid));
            return self.undo(outcome, Some(new));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            self.wait(deadline);
            let s = self.observer.snapshot();
            let old_serves = s.generations.iter().any(|g| {
                old_generations.contains(&g.id) && g.state != Some(GenerationState::Exited)
            });
            if !old_serves {
                self.report.step(format!(
                    "generation {} ended: the old master's workers exited",
                    self.master.generation
                ));
                break;
            }
            if !new.is_alive() {
                let message = format!(
                    "new master {} exited after the old workers were told to stop: the old master {} starts its workers again (nginx does when its new binary exits); see the error log",
                    new.pid, old.pid
                );
                return Outcome::new("failed", exit::REJECTED, message, Some(id), Some(new.pid));
            }
            if Instant::now() >= deadline {
                let message = format!(
                    "new master {} serves generation {id}, but the old master {}'s workers have not all exited within {:?} (long requests or connections?): send SIGQUIT to {} once they have, or SIGHUP to it to take them back",
                    new.pid, old.pid, self.timeout, old.pid
                );
                return Outcome::new("timeout", exit::TIMEOUT, message, Some(id), Some(new.pid));
            }
        }
        if !new.is_alive() {
            let message = format!(
                "new master {} exited before the old master {} was told to quit: send SIGHUP to {} to start its workers again",
                new.pid, old.pid, old.pid
            );
            return Outcome::new("failed", exit::REJECTED, message, Some(id), Some(new.pid));
        }
        if let Err(e) = self.send(old, Signal::Quit, "old master") {
            return Outcome::new("error", exit::FAILURE, e, Some(id), Some(new.pid));
        }
        if !self.wait_gone(old) {
            let message = format!(
                "new master {} serves generation {id}, but the old master {} has not exited within {:?}",
                new.pid, old.pid, self.timeout
            );
            return Outcome::new("timeout", exit::TIMEOUT, message, Some(id), Some(new.pid));
        }
        self.report.step(format!("old master {} exited", old.pid));
        let message = format!(
            "upgrade committed: new master {} serves generation {id} ({})",
            new.pid,
            self.elapsed()
        );
        Outcome::new("committed", exit::OK, message, Some(id), Some(new.pid))
    }

    /// Waits up to the timeout for `process` to be gone.
    fn wait_gone(&mut self, process: Identity) -> bool {
        let deadline = Instant::now() + self.timeout;
        while process.is_alive() {
            if Instant::now() >= deadline {
                return false;
            }
            self.wait(deadline);
        }
        true
    }

    /// After a failed upgrade: stops the new master if it still runs (SIGQUIT, then
    /// SIGTERM, each given the timeout), and says what serves.
    fn undo(&mut self, mut outcome: Outcome, new: Option<Identity>) -> Outcome {
        let mut said = Vec::new();
        if let Some(new) = new {
            let mut gone = !new.is_alive();
            let mut signalled = false;
            for signal in [Signal::Quit, Signal::Term] {
                if gone {
                    break;
                }
                if signal == Signal::Quit && !new.handles(signal) {
                    // Still loading its configuration (a port it retries), or exiting
                    // after giving it up: SIGQUIT would kill it with a core dump.
                    // Given the time, it gives up and exits by itself.
                    self.report.step(format!(
                        "new master {} handles no signal yet (loading or exiting): waiting for it to exit",
                        new.pid
                    ));
                    gone = self.wait_gone(new);
                    continue;
                }
                match new.signal(signal) {
                    Ok(()) => {
                        self.report
                            .step(format!("sent {signal} to new master {}", new.pid));
                        signalled = true;
                        gone = self.wait_gone(new);
                    }
                    Err(Error::ProcessGone { .. }) => gone = true,
                    Err(e) => {
                        said.push(format!("the new master could not be stopped: {e}"));
                        break;
                    }
                }
            }
            if gone {
                self.report.step(format!("new master {} exited", new.pid));
                said.push(if signalled {
                    format!("new master {} stopped", new.pid)
                } else {
                    format!("new master {} exited by itself", new.pid)
                });
            } else {
                said.push(format!(
                    "new master {} is still running: stop it (kill -9 {})",
                    new.pid, new.pid
                ));
            }
        }
        if outcome.code != exit::FAILURE {
            said.push(self.serving());
        }
        if !said.is_empty() {
            outcome.message = format!("{}; {}", outcome.message, said.join("; "));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use worker_manager::{Capacities, Stats};

    fn generation(id: u64, pid: u32, committed: bool, state: GenerationState) -> GenerationInfo {
        GenerationInfo {
            id,
            state: Some(state),
            kind: Some(StartKind::Reload),
            previous_run: None,
            master_pid: pid,
            master_start_time: u64::from(pid) * 10,
            registered: SystemTime::UNIX_EPOCH,
            interval: Duration::ZERO,
            failed: Duration::ZERO,
            expected_workers: 2,
            live_workers: 2,
            workers_started: 2,
            respawns: 0,
            crashes: 0,
            exit_reason: None,
            exited: None,
            committed: committed.then_some(SystemTime::UNIX_EPOCH),
        }
    }

    fn snapshot(generations: Vec<GenerationInfo>) -> Snapshot {
        Snapshot {
            consistent: true,
            previous_boot: false,
            created: SystemTime::UNIX_EPOCH,
            lock: None,
            run_id: 1,
            run_state: None,
            next_seq: 1,
            capacities: Capacities::default(),
            generations,
            workers: Vec::new(),
            stats: Stats::default(),
            events: Vec::new(),
            verdict: None,
            last_success: None,
            reload_verdicts: 0,
            reload_failures: 0,
            crash_loop_intensity: 5,
            crash_loop_period: Duration::from_secs(30),
            crash_loops: Vec::new(),
            leader: None,
            leader_term: 0,
            leader_cause: None,
            leader_changes: Vec::new(),
        }
    }

    fn id(pid: u32) -> Identity {
        Identity {
            pid,
            start_time: u64::from(pid) * 10,
        }
    }

    const REGISTRY: &str = "/dev/shm/r.wm";

    #[test]
    fn the_master_of_the_newest_serving_configuration_is_chosen() {
        use GenerationState::*;
        // An old reload draining, the current one, and a failed one never committed.
        let s = snapshot(vec![
            generation(1, 100, true, Draining),
            generation(2, 100, true, Running),
            generation(3, 100, false, Starting),
            generation(4, 300, true, Exited),
        ]);
        let all = masters(&s);
        assert_eq!(
            all,
            [Master {
                identity: id(100),
                generation: 2
            }]
        );
        let chosen = choose(&all, None, |_| true, Path::new(REGISTRY)).unwrap();
        assert_eq!(chosen.generation, 2);
        // A reload in flight: generation 3 waits for its verdict.
        assert_eq!(in_flight(&s, 2, |_| true).map(|g| g.id), Some(3));
        assert_eq!(in_flight(&s, 2, |_| false), None, "its master is gone");
    }

    #[test]
    fn a_gone_master_two_masters_and_a_lying_pid_file_are_refused() {
        use GenerationState::*;
        let path = Path::new(REGISTRY);
        let s = snapshot(vec![
            generation(1, 100, true, Running),
            generation(2, 200, true, Running),
        ]);
        let all = masters(&s);
        let gone = choose(&all, None, |m| m.pid != 200, path).unwrap_err();
        assert!(gone.contains("pid 200, is gone"), "{gone}");
        let two = choose(&all, None, |_| true, path).unwrap_err();
        assert!(two.contains("two masters are live"), "{two}");
        let file = Path::new("/run/nginx.pid");
        let named = choose(&all, Some((file, 100)), |_| true, path).unwrap();
        assert_eq!(named.identity, id(100));
        let lying = choose(&all, Some((file, 123)), |_| true, path).unwrap_err();
        assert!(
            lying.contains(
                "pid file /run/nginx.pid says 123 but the registry's masters are 200 and 100"
            ),
            "{lying}"
        );
        let stale = choose(&all, Some((file, 100)), |m| m.pid != 100, path).unwrap_err();
        assert!(stale.contains("pid 100, is gone"), "{stale}");
        let none = choose(&[], None, |_| true, path).unwrap_err();
        assert!(
            none.contains("names no configuration that serves"),
            "{none}"
        );
    }
}
