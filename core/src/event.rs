//! Events: what happened, to whom, and the counts at that moment.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::clock;
use crate::lifecycle::{
    AbortCause, Detection, EventKind, ExitReason, LeaderCause, LockOp, RunEnd, StartKind,
};

/// A worker, as the original library names it: `"<generation>-<pid>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId {
    pub generation: u64,
    pub pid: u32,
    /// The worker's index within its generation (`ngx.worker.id()`).
    pub index: u32,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.generation, self.pid)
    }
}

/// Live workers around the event's generation, as the callbacks get them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Live workers of the next-older tracked generation; `None` when there is none.
    pub prev: Option<u32>,
    /// Live workers of the event's generation (including a starting or exiting caller;
    /// 0 for master events).
    pub mine: u32,
    /// Live workers of the next-newer tracked generation; `None` when there is none.
    pub next: Option<u32>,
}

/// What an event says beyond its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detail {
    MasterStart {
        kind: StartKind,
        /// For a restart: how the previous node run ended.
        previous_run: Option<RunEnd>,
        master_pid: u32,
    },
    WorkerStart {
        worker: WorkerId,
        /// The dead worker of the same generation and index that this one replaces.
        replaces: Option<WorkerId>,
    },
    WorkerExit {
        worker: WorkerId,
        reason: ExitReason,
    },
    MasterExit {
        reason: ExitReason,
    },
    WorkerCrash {
        worker: WorkerId,
        detection: Detection,
        /// The worker died holding the registry lock.
        held_lock: bool,
        /// The process that noticed.
        detected_by: u32,
    },
    GenerationAbort {
        cause: AbortCause,
    },
    WorkerHang {
        worker: WorkerId,
        /// How long since its last heartbeat.
        silent_for: Duration,
    },
    WorkerRecover {
        worker: WorkerId,
        /// How long it had been declared hung.
        hung_for: Duration,
    },
    LockRecovered {
        holder_pid: u32,
        holder_op: LockOp,
    },
    WorkerCrashLoop {
        /// The crash that made it a loop: the last crashed worker of the index.
        worker: WorkerId,
        /// Crashes of the index within the period.
        crashes: u32,
        /// The crash-loop rule's period.
        period: Duration,
    },
    WorkerCrashLoopEnd {
        /// The index's last crashed worker.
        worker: WorkerId,
        /// From the loop's start to its end.
        lasted: Duration,
    },
    LeaderElected {
        /// The new leader; `None`: no worker may lead now.
        leader: Option<WorkerId>,
        /// The previous leader's pid (0: there was none).
        previous_pid: u32,
        /// Leadership changes so far, this one included.
        term: u64,
        cause: LeaderCause,
    },
}

/// One lifecycle event, as journalled and as handed to callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Position in the journal; increases by one per event for the registry's life.
    pub seq: u64,
    /// Wall-clock time.
    pub time: SystemTime,
    /// The generation the event is about.
    pub generation: u64,
    pub counts: Counts,
    pub detail: Detail,
    /// Delivered again: the process that had it delivered to its callbacks died
    /// before they all returned (never true in the journal itself).
    pub redelivered: bool,
}

impl Detail {
    /// The kind of event this detail belongs to.
    pub fn kind(&self) -> EventKind {
        match self {
            Detail::MasterStart { .. } => EventKind::MasterStart,
            Detail::WorkerStart { .. } => EventKind::WorkerStart,
            Detail::WorkerExit { .. } => EventKind::WorkerExit,
            Detail::MasterExit { .. } => EventKind::MasterExit,
            Detail::WorkerCrash { .. } => EventKind::WorkerCrash,
            Detail::GenerationAbort { .. } => EventKind::GenerationAbort,
            Detail::WorkerHang { .. } => EventKind::WorkerHang,
            Detail::WorkerRecover { .. } => EventKind::WorkerRecover,
            Detail::LockRecovered { .. } => EventKind::LockRecovered,
            Detail::WorkerCrashLoop { .. } => EventKind::WorkerCrashLoop,
            Detail::WorkerCrashLoopEnd { .. } => EventKind::WorkerCrashLoopEnd,
            Detail::LeaderElected { .. } => EventKind::LeaderElected,
        }
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.detail.kind()
    }

    /// The worker the event is about, if any.
    pub fn worker(&self) -> Option<WorkerId> {
        match self.detail {
            Detail::WorkerStart { worker, .. }
            | Detail::WorkerExit { worker, .. }
            | Detail::WorkerCrash { worker, .. }
            | Detail::WorkerHang { worker, .. }
            | Detail::WorkerRecover { worker, .. }
            | Detail::WorkerCrashLoop { worker, .. }
            | Detail::WorkerCrashLoopEnd { worker, .. } => Some(worker),
            Detail::LeaderElected { leader, .. } => leader,
            _ => None,
        }
    }

    /// The callbacks' `id`: the worker id for worker events, the generation otherwise.
    pub fn id(&self) -> String {
        match self.worker() {
            Some(w) => w.to_string(),
            None => self.generation.to_string(),
        }
    }
}

#[cfg(feature = "json")]
impl Event {
    /// The event as one JSON object, as `worker-manager events --json` prints it
    /// (`docs/cli.md`): the keys of the Lua `info` table, plus the counts.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let count = |c: Option<u32>| c.map_or(Value::Null, Value::from);
        let mut o = Map::new();
        o.insert("seq".into(), self.seq.into());
        o.insert("time".into(), crate::clock::unix_seconds(self.time).into());
        o.insert("event".into(), self.kind().as_str().into());
        o.insert("generation".into(), self.generation.into());
        o.insert("id".into(), self.id().into());
        o.insert("n_prev".into(), count(self.counts.prev));
        o.insert("n_mine".into(), self.counts.mine.into());
        o.insert("n_next".into(), count(self.counts.next));
        if let Some(w) = self.worker() {
            o.insert("worker".into(), w.to_string().into());
            o.insert("pid".into(), w.pid.into());
            o.insert("index".into(), w.index.into());
        }
        let detail = match self.detail {
            Detail::MasterStart {
                kind,
                previous_run,
                master_pid,
            } => json!({
                "kind": kind.as_str(),
                "previous_run": previous_run.map(|r| r.as_str()),
                "master_pid": master_pid,
            }),
            Detail::WorkerStart { replaces, .. } => json!({
                "respawn": replaces.is_some(),
                "replaces": replaces.map(|w| w.to_string()),
            }),
            Detail::WorkerExit { reason, .. } | Detail::MasterExit { reason } => {
                json!({ "reason": reason.as_str() })
            }
            Detail::WorkerCrash {
                detection,
                held_lock,
                detected_by,
                ..
            } => json!({
                "detection": detection.as_str(),
                "held_lock": held_lock,
                "detected_by": detected_by,
            }),
            Detail::GenerationAbort { cause } => json!({ "cause": cause.as_str() }),
            Detail::WorkerHang { silent_for, .. } => {
                json!({ "silent_for": silent_for.as_secs_f64() })
            }
            Detail::WorkerRecover { hung_for, .. } => {
                json!({ "hung_for": hung_for.as_secs_f64() })
            }
            Detail::LockRecovered {
                holder_pid,
                holder_op,
            } => json!({ "holder_pid": holder_pid, "holder_op": holder_op.as_str() }),
            Detail::WorkerCrashLoop {
                crashes, period, ..
            } => json!({ "crashes": crashes, "period": period.as_secs_f64() }),
            Detail::WorkerCrashLoopEnd { lasted, .. } => {
                json!({ "lasted": lasted.as_secs_f64() })
            }
            Detail::LeaderElected {
                previous_pid,
                term,
                cause,
                ..
            } => json!({
                "term": term,
                "cause": cause.as_str(),
                "previous_pid": (previous_pid != 0).then_some(previous_pid),
            }),
        };
        if let Value::Object(fields) = detail {
            o.extend(fields);
        }
        Value::Object(o)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |c: Option<u32>| c.map_or("nil".to_string(), |n| n.to_string());
        write!(
            f,
            "#{} {} id={} n_prev={} n_mine={} n_next={}",
            self.seq,
            self.kind(),
            self.id(),
            count(self.counts.prev),
            self.counts.mine,
            count(self.counts.next)
        )?;
        match self.detail {
            Detail::MasterStart {
                kind,
                previous_run,
                master_pid,
            } => {
                write!(f, " kind={kind} master_pid={master_pid}")?;
                if let Some(run) = previous_run {
                    write!(f, " previous_run={run}")?;
                }
                Ok(())
            }
            Detail::WorkerStart { worker, replaces } => {
                write!(f, " index={} respawn={}", worker.index, replaces.is_some())?;
                match replaces {
                    Some(dead) => write!(f, " replaces={dead}"),
                    None => Ok(()),
                }
            }
            Detail::WorkerExit { worker, reason } => {
                write!(f, " index={} reason={reason}", worker.index)
            }
            Detail::MasterExit { reason } => write!(f, " reason={reason}"),
            Detail::WorkerCrash {
                worker,
                detection,
                held_lock,
                detected_by,
            } => write!(
                f,
                " index={} pid={} detection={detection} held_lock={held_lock} detected_by={detected_by}",
                worker.index, worker.pid
            ),
            Detail::GenerationAbort { cause } => write!(f, " cause={cause}"),
            Detail::WorkerHang { worker, silent_for } => {
                write!(f, " index={} silent_for={silent_for:?}", worker.index)
            }
            Detail::WorkerRecover { worker, hung_for } => {
                write!(f, " index={} hung_for={hung_for:?}", worker.index)
            }
            Detail::LockRecovered {
                holder_pid,
                holder_op,
            } => write!(f, " dead_holder={holder_pid} during={holder_op}"),
            Detail::WorkerCrashLoop {
                worker,
                crashes,
                period,
            } => write!(
                f,
                " index={} crashes={crashes} period={period:?}",
                worker.index
            ),
            Detail::WorkerCrashLoopEnd { worker, lasted } => {
                write!(f, " index={} lasted={lasted:?}", worker.index)
            }
            Detail::LeaderElected {
                leader,
                previous_pid,
                term,
                cause,
            } => {
                match leader {
                    Some(w) => write!(f, " leader={w} index={}", w.index)?,
                    None => f.write_str(" leader=none")?,
                }
                write!(f, " term={term} cause={cause} previous_pid={previous_pid}")
            }
        }?;
        if self.redelivered {
            f.write_str(" redelivered")?;
        }
        Ok(())
    }
}

/// An event as fixed fields: what the journal stores (see `docs/design.md`, journal
/// entry), and what the C ABI hands out as `struct wm_event`, so a change here is a
/// change of the ABI's version. Counts of -1 mean none (`nil` in Lua).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoded {
    /// The event's position in the journal.
    pub seq: u64,
    /// Wall-clock time, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The code of its kind.
    pub kind: u32,
    /// By kind, the code of the start kind, exit reason, detection, abort cause or
    /// lock operation; for a crash loop, the crashes within its period; for a
    /// leader's election, its cause.
    pub detail: u32,
    pub generation: u64,
    /// The worker's pid; the master's for master_start.
    pub pid: u32,
    /// The worker's index; -1 for an event about no worker.
    pub index: i32,
    pub n_prev: i32,
    pub n_mine: i32,
    pub n_next: i32,
    /// The replaced worker of a respawn, the detecting process of a crash, the dead
    /// holder of a lock recovery, the previous leader.
    pub other_pid: u32,
    /// `RESPAWN` or `HELD_LOCK` (by kind), and `REDELIVERED` (`WM_EVENT_*` in C).
    pub flags: u32,
    /// For master_start: the code of the previous run's end (0: none); for hang and
    /// recover, milliseconds; for a crash loop, its period, for its end, its length,
    /// in milliseconds; for a leader's election, the term.
    pub value: u64,
}

impl Encoded {
    /// `flags` of a worker_start: it replaces a dead worker.
    pub const RESPAWN: u32 = 1;
    /// `flags` of a worker_crash: it died holding the registry lock.
    pub const HELD_LOCK: u32 = 1;
    /// `flags`: delivered again, because the process that had it delivered to its
    /// callbacks died before they all returned (never in the journal itself).
    pub const REDELIVERED: u32 = 2;
}

fn encode_count(c: Option<u32>) -> i32 {
    c.map_or(-1, |n| n.min(i32::MAX as u32) as i32)
}

fn decode_count(c: i32) -> Option<u32> {
    u32::try_from(c).ok()
}

impl Event {
    /// The event as fixed fields.
    pub fn encode(&self) -> Encoded {
        let mut e = Encoded {
            seq: self.seq,
            time_ns: clock::unix_nanos(self.time),
            kind: self.kind().code(),
            generation: self.generation,
            index: -1,
            n_prev: encode_count(self.counts.prev),
            n_mine: encode_count(Some(self.counts.mine)),
            n_next: encode_count(self.counts.next),
            flags: if self.redelivered {
                Encoded::REDELIVERED
            } else {
                0
            },
            ..Encoded::default()
        };
        if let Some(w) = self.worker() {
            e.pid = w.pid;
            e.index = w.index as i32;
        }
        match self.detail {
            Detail::MasterStart {
                kind,
                previous_run,
                master_pid,
            } => {
                e.detail = kind.code();
                e.value = previous_run.map_or(0, |r| r.code() as u64);
                e.pid = master_pid;
            }
            Detail::WorkerStart { replaces, .. } => {
                e.flags |= if replaces.is_some() {
                    Encoded::RESPAWN
                } else {
                    0
                };
                e.other_pid = replaces.map_or(0, |w| w.pid);
            }
            Detail::WorkerExit { reason, .. } | Detail::MasterExit { reason } => {
                e.detail = reason.code();
            }
            Detail::WorkerCrash {
                detection,
                held_lock,
                detected_by,
                ..
            } => {
                e.detail = detection.code();
                e.flags |= if held_lock { Encoded::HELD_LOCK } else { 0 };
                e.other_pid = detected_by;
            }
            Detail::GenerationAbort { cause } => e.detail = cause.code(),
            Detail::WorkerHang { silent_for, .. } => e.value = clock::millis(silent_for),
            Detail::WorkerRecover { hung_for, .. } => e.value = clock::millis(hung_for),
            Detail::LockRecovered {
                holder_pid,
                holder_op,
            } => {
                e.other_pid = holder_pid;
                e.detail = holder_op.code();
            }
            Detail::WorkerCrashLoop {
                crashes, period, ..
            } => {
                e.detail = crashes;
                e.value = clock::millis(period);
            }
            Detail::WorkerCrashLoopEnd { lasted, .. } => e.value = clock::millis(lasted),
            Detail::LeaderElected {
                previous_pid,
                term,
                cause,
                ..
            } => {
                e.other_pid = previous_pid;
                e.detail = cause.code();
                e.value = term;
            }
        }
        e
    }

    /// Decodes a stored event; `None` for codes this build does not know.
    pub(crate) fn decode(e: &Encoded) -> Option<Event> {
        let worker = WorkerId {
            generation: e.generation,
            pid: e.pid,
            index: u32::try_from(e.index).unwrap_or(u32::MAX),
        };
        let detail = match EventKind::from_code(e.kind)? {
            EventKind::MasterStart => Detail::MasterStart {
                kind: StartKind::from_code(e.detail)?,
                previous_run: RunEnd::from_code(e.value as u32),
                master_pid: e.pid,
            },
            EventKind::WorkerStart => Detail::WorkerStart {
                worker,
                replaces: (e.other_pid != 0).then_some(WorkerId {
                    pid: e.other_pid,
                    ..worker
                }),
            },
            EventKind::WorkerExit => Detail::WorkerExit {
                worker,
                reason: ExitReason::from_code(e.detail)?,
            },
            EventKind::MasterExit => Detail::MasterExit {
                reason: ExitReason::from_code(e.detail)?,
            },
            EventKind::WorkerCrash => Detail::WorkerCrash {
                worker,
                detection: Detection::from_code(e.detail)?,
                held_lock: e.flags & Encoded::HELD_LOCK != 0,
                detected_by: e.other_pid,
            },
            EventKind::GenerationAbort => Detail::GenerationAbort {
                cause: AbortCause::from_code(e.detail)?,
            },
            EventKind::WorkerHang => Detail::WorkerHang {
                worker,
                silent_for: clock::from_millis(e.value),
            },
            EventKind::WorkerRecover => Detail::WorkerRecover {
                worker,
                hung_for: clock::from_millis(e.value),
            },
            EventKind::LockRecovered => Detail::LockRecovered {
                holder_pid: e.other_pid,
                holder_op: LockOp::from_code(e.detail)?,
            },
            EventKind::WorkerCrashLoop => Detail::WorkerCrashLoop {
                worker,
                crashes: e.detail,
                period: clock::from_millis(e.value),
            },
            EventKind::WorkerCrashLoopEnd => Detail::WorkerCrashLoopEnd {
                worker,
                lasted: clock::from_millis(e.value),
            },
            EventKind::LeaderElected => Detail::LeaderElected {
                leader: (e.index >= 0).then_some(worker),
                previous_pid: e.other_pid,
                term: e.value,
                cause: LeaderCause::from_code(e.detail)?,
            },
        };
        Some(Event {
            seq: e.seq,
            time: clock::from_unix_nanos(e.time_ns),
            generation: e.generation,
            counts: Counts {
                prev: decode_count(e.n_prev),
                mine: decode_count(e.n_mine)?,
                next: decode_count(e.n_next),
            },
            detail,
            // A redelivery is a hand-over to callbacks, never a journal entry.
            redelivered: false,
        })
    }
}
