//! The JSON form of events that the probes print and the nginx harness reads
//! (`tests/src/json.rs`): every kind of detail reads back as written, and keys that
//! disagree are refused.

#[path = "../src/json.rs"]
mod json;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use worker_manager::{
    AbortCause, Counts, Detail, Detection, Event, ExitReason, LockOp, RunEnd, StartKind, WorkerId,
};

use json::{from_json, from_line, reason, to_json, to_line};

fn event(generation: u64, detail: Detail) -> Event {
    Event {
        seq: 7,
        time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
        generation,
        counts: Counts {
            prev: Some(2),
            mine: 1,
            next: None,
        },
        detail,
        redelivered: true,
    }
}

#[test]
fn every_detail_reads_back_as_written() {
    let w = WorkerId {
        generation: 3,
        pid: 4242,
        index: 1,
    };
    let details = [
        Detail::MasterStart {
            kind: StartKind::Restart,
            previous_run: Some(RunEnd::Unclean),
            master_pid: 17,
        },
        Detail::MasterStart {
            kind: StartKind::Start,
            previous_run: None,
            master_pid: 17,
        },
        Detail::WorkerStart {
            worker: w,
            replaces: Some(WorkerId { pid: 99, ..w }),
        },
        Detail::WorkerStart {
            worker: w,
            replaces: None,
        },
        Detail::WorkerExit {
            worker: w,
            reason: ExitReason::FastStop,
        },
        Detail::MasterExit {
            reason: ExitReason::Upgrade,
        },
        Detail::WorkerCrash {
            worker: w,
            detection: Detection::OwnerDied,
            held_lock: true,
            detected_by: 5,
        },
        Detail::GenerationAbort {
            cause: AbortCause::TimedOut,
        },
        Detail::WorkerHang {
            worker: w,
            silent_for: Duration::from_millis(2500),
        },
        Detail::WorkerRecover {
            worker: w,
            hung_for: Duration::from_millis(125),
        },
        Detail::LockRecovered {
            holder_pid: 8,
            holder_op: LockOp::RegisterWorker,
        },
    ];
    for detail in details {
        let written = event(3, detail);
        let read = from_line(&to_line(&written)).unwrap();
        // The time is a float of seconds: exact to well within a microsecond.
        let drift = |a: SystemTime, b: SystemTime| {
            a.duration_since(b)
                .or_else(|_| b.duration_since(a))
                .unwrap()
        };
        assert!(drift(read.time, written.time) < Duration::from_micros(1));
        assert_eq!(
            Event {
                time: written.time,
                ..read
            },
            written
        );
    }
}

#[test]
fn keys_that_disagree_or_are_unknown_are_refused() {
    let crash = event(
        3,
        Detail::WorkerCrash {
            worker: WorkerId {
                generation: 3,
                pid: 10,
                index: 0,
            },
            detection: Detection::Abandoned,
            held_lock: false,
            detected_by: 1,
        },
    );
    let with = |key: &str, value: Value| {
        let mut v = to_json(&crash);
        v[key] = value;
        from_json(v)
    };
    assert!(with("id", "3-11".into()).is_err());
    assert!(with("detection", "eaten".into()).is_err());
    assert!(with("event", "worker_exit".into()).is_err(), "no reason");
    assert!(with("held_lock", Value::Null).is_err());
    assert!(with("redelivered", Value::Null).is_err());
    assert!(with("n_prev", Value::Null).is_ok());
}

#[test]
fn an_exit_has_a_reason() {
    let exit = event(
        3,
        Detail::MasterExit {
            reason: ExitReason::Upgrade,
        },
    );
    assert_eq!(reason(&exit), ExitReason::Upgrade);
}

#[test]
#[should_panic(expected = "not an exit")]
fn nothing_else_has_one() {
    reason(&event(
        3,
        Detail::GenerationAbort {
            cause: AbortCause::Failed,
        },
    ));
}
