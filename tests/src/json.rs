//! Events as JSON objects in the schema of `worker-manager events --json`
//! (`docs/cli.md`): the keys of the Lua callbacks' `info` table and the counts, plus
//! `redelivered`, which the `info` table has and the journal (all the CLI prints)
//! never needs. [`to_json`] writes it as the CLI does; [`from_json`] reads it back,
//! from a probe or from a Lua callback's `cjson.encode` of its arguments, into the
//! library's own [`Event`], checking that the keys agree with one another, so that
//! tests assert on fields, never on text.
//!
//! One source file, included by path where it is needed (no crate, so that nothing
//! that includes it gets the core's test-only features): `wm-probe` writes with it,
//! the nginx harness (`tests/tests/common/nginx.rs`, which the CLI's tests and the
//! benchmarks include too) reads with it; `tests/tests/json.rs` tests it.

use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use worker_manager::{
    AbortCause, Counts, Detail, Detection, Event, EventKind, ExitReason, LeaderCause, LockOp,
    RunEnd, StartKind, WorkerId,
};

/// A lifecycle enum read from its name, as JSON and Lua spell it.
pub trait Named: Copy + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    /// The variant called `name`; `None` for a name this build does not know.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}

macro_rules! named {
    ($($t:ident),+) => {$(
        impl Named for $t {
            const ALL: &'static [$t] = $t::ALL;
            fn name(self) -> &'static str {
                self.as_str()
            }
        }
    )+};
}

named!(
    EventKind,
    StartKind,
    RunEnd,
    ExitReason,
    Detection,
    AbortCause,
    LockOp,
    LeaderCause
);

/// `e` as one JSON object, as `worker-manager events --json` prints it, with
/// `redelivered`.
pub fn to_json(e: &Event) -> Value {
    let mut o = e.to_json();
    o["redelivered"] = e.redelivered.into();
    o
}

/// The keys of the schema. A key missing or `null` is `None` (the CLI writes `null`,
/// `cjson` leaves a `nil` out); keys of other writers (a Lua record's own) are
/// ignored.
#[derive(Debug, Deserialize)]
struct Fields {
    seq: u64,
    time: f64,
    event: String,
    generation: u64,
    id: String,
    n_prev: Option<u32>,
    n_mine: u32,
    n_next: Option<u32>,
    redelivered: bool,
    worker: Option<String>,
    pid: Option<u32>,
    index: Option<u32>,
    kind: Option<String>,
    previous_run: Option<String>,
    master_pid: Option<u32>,
    respawn: Option<bool>,
    replaces: Option<String>,
    reason: Option<String>,
    detection: Option<String>,
    held_lock: Option<bool>,
    detected_by: Option<u32>,
    cause: Option<String>,
    silent_for: Option<f64>,
    hung_for: Option<f64>,
    holder_pid: Option<u32>,
    holder_op: Option<String>,
    crashes: Option<u32>,
    period: Option<f64>,
    lasted: Option<f64>,
    term: Option<u64>,
    previous_pid: Option<u32>,
}

fn required<T>(key: &str, value: Option<T>) -> Result<T, String> {
    value.ok_or_else(|| format!("no {key:?}"))
}

fn named<T: Named>(key: &str, name: Option<String>) -> Result<T, String> {
    let name = required(key, name)?;
    T::from_name(&name).ok_or_else(|| format!("{key:?} is {name:?}, which is no name of one"))
}

fn seconds(key: &str, value: Option<f64>) -> Result<Duration, String> {
    let secs = required(key, value)?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{key:?} is {secs}: {e}"))
}

/// `"<generation>-<pid>"`, of a worker of `generation` at `index`.
fn worker_id(text: &str, generation: u64, index: u32) -> Result<WorkerId, String> {
    let parsed = text
        .split_once('-')
        .and_then(|(g, pid)| Some((g.parse::<u64>().ok()?, pid.parse::<u32>().ok()?)));
    match parsed {
        Some((g, pid)) if g == generation => Ok(WorkerId {
            generation,
            pid,
            index,
        }),
        _ => Err(format!("{text:?} is no worker of generation {generation}")),
    }
}

/// The event a JSON object of the schema describes; an error names the key that is
/// missing, unknown or disagrees with the others.
pub fn from_json(value: Value) -> Result<Event, String> {
    let f: Fields = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let worker = match (f.pid, f.index) {
        (Some(pid), Some(index)) => Some(WorkerId {
            generation: f.generation,
            pid,
            index,
        }),
        _ => None,
    };
    let the_worker = || required("pid and index", worker);
    let kind: EventKind = named("event", Some(f.event))?;
    let detail = match kind {
        EventKind::MasterStart => Detail::MasterStart {
            kind: named("kind", f.kind)?,
            previous_run: f
                .previous_run
                .map(|run| named("previous_run", Some(run)))
                .transpose()?,
            master_pid: required("master_pid", f.master_pid)?,
        },
        EventKind::WorkerStart => {
            let worker = the_worker()?;
            let replaces = f
                .replaces
                .map(|dead| worker_id(&dead, f.generation, worker.index))
                .transpose()?;
            if f.respawn != Some(replaces.is_some()) {
                return Err(format!(
                    "\"respawn\" is {:?}, \"replaces\" {replaces:?}",
                    f.respawn
                ));
            }
            Detail::WorkerStart { worker, replaces }
        }
        EventKind::WorkerExit => Detail::WorkerExit {
            worker: the_worker()?,
            reason: named("reason", f.reason)?,
        },
        EventKind::MasterExit => Detail::MasterExit {
            reason: named("reason", f.reason)?,
        },
        EventKind::WorkerCrash => Detail::WorkerCrash {
            worker: the_worker()?,
            detection: named("detection", f.detection)?,
            held_lock: required("held_lock", f.held_lock)?,
            detected_by: required("detected_by", f.detected_by)?,
        },
        EventKind::GenerationAbort => Detail::GenerationAbort {
            cause: named("cause", f.cause)?,
        },
        EventKind::WorkerHang => Detail::WorkerHang {
            worker: the_worker()?,
            silent_for: seconds("silent_for", f.silent_for)?,
        },
        EventKind::WorkerRecover => Detail::WorkerRecover {
            worker: the_worker()?,
            hung_for: seconds("hung_for", f.hung_for)?,
        },
        EventKind::LockRecovered => Detail::LockRecovered {
            holder_pid: required("holder_pid", f.holder_pid)?,
            holder_op: named("holder_op", f.holder_op)?,
        },
        EventKind::WorkerCrashLoop => Detail::WorkerCrashLoop {
            worker: the_worker()?,
            crashes: required("crashes", f.crashes)?,
            period: seconds("period", f.period)?,
        },
        EventKind::WorkerCrashLoopEnd => Detail::WorkerCrashLoopEnd {
            worker: the_worker()?,
            lasted: seconds("lasted", f.lasted)?,
        },
        EventKind::LeaderElected => Detail::LeaderElected {
            leader: f.worker.as_ref().map(|_| the_worker()).transpose()?,
            previous_pid: f.previous_pid.unwrap_or(0),
            term: required("term", f.term)?,
            cause: named("cause", f.cause)?,
        },
        other => return Err(format!("{other}: an event kind newer than the tests")),
    };
    let event = Event {
        seq: f.seq,
        time: UNIX_EPOCH + seconds("time", Some(f.time))?,
        generation: f.generation,
        counts: Counts {
            prev: f.n_prev,
            mine: f.n_mine,
            next: f.n_next,
        },
        detail,
        redelivered: f.redelivered,
    };
    // The keys that repeat others must agree with them.
    if f.id != event.id() {
        return Err(format!("\"id\" is {:?}, not {:?}", f.id, event.id()));
    }
    let named_worker = event.worker().map(|w| w.to_string());
    if f.worker != named_worker || worker.is_some() != named_worker.is_some() {
        return Err(format!(
            "\"worker\" is {:?}, \"pid\" {:?}, \"index\" {:?} for a {kind}",
            f.worker, f.pid, f.index
        ));
    }
    Ok(event)
}

/// The reason of a `worker_exit` or `master_exit`; fails on another event.
pub fn reason(e: &Event) -> ExitReason {
    match e.detail {
        Detail::WorkerExit { reason, .. } | Detail::MasterExit { reason } => reason,
        _ => panic!("not an exit: {e}"),
    }
}

/// `e` as one line of JSON.
pub fn to_line(e: &Event) -> String {
    to_json(e).to_string()
}

/// The event on one line of JSON.
pub fn from_line(line: &str) -> Result<Event, String> {
    let value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    from_json(value).map_err(|e| format!("{e}: {line}"))
}
