//! Worker and generation lifecycle tracking for nginx/OpenResty and any pre-fork
//! server, in a crash-safe shared-memory registry.
//!
//! A master registers a *generation* (one loaded configuration) with
//! [`Registry::register_generation`]; each worker process registers itself with
//! [`Registry::register_worker`], heartbeats with [`Registry::heartbeat`] and leaves
//! with [`Registry::exit_worker`]; anyone calls [`Registry::sweep`] to have deaths,
//! hangs and abandoned generations reported. Every operation hands its [`Event`]s to
//! a callback, under the registry's cross-process lock, with the counts the callbacks
//! of Kong's lua-resty-worker-manager get.
//!
//! ```no_run
//! use worker_manager::{GenerationConfig, Options, Registry};
//!
//! let registry = Registry::open("/dev/shm/example.wm", &Options::default())?;
//! let generation = registry.register_generation(&GenerationConfig::default(), |e| println!("{e}"))?;
//! // ... fork; in each child:
//! let worker = registry.register_worker(generation, 0, |e| println!("{e}"))?;
//! registry.heartbeat(&worker)?;
//! registry.exit_worker(worker, true, |e| println!("{e}"))?;
//! # Ok::<(), worker_manager::Error>(())
//! ```
//!
//! From outside the server, an [`Observer`] maps the registry read-only and reads
//! snapshots and the journal without the lock.
//!
//! The design (region layout, locks, rules) is in `docs/design.md`. All `unsafe`
//! code is in three small modules: `region::map` (the mapping), `lock` (the robust
//! mutex) and `sys` (system calls); the crate denies `unsafe_code` everywhere else.

#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]
// Every public function that returns a `Result` says which errors, and when.
#![warn(clippy::missing_errors_doc)]

mod apply;
mod change;
pub mod clock;
mod crash;
mod error;
mod event;
pub mod exposition;
mod journal;
pub mod leader;
pub mod lifecycle;
#[allow(unsafe_code)]
mod lock;
pub mod naming;
mod observer;
mod operator;
mod process;
mod region;
mod registry;
mod rules;
mod snapshot;
#[allow(unsafe_code)]
mod sys;
mod tables;

pub use change::{LIVE_WRITER_PATIENCE, OBSERVE_PATIENCE};
pub use error::{Error, Result};
pub use event::{Counts, Detail, Encoded, Event, WorkerId};
pub use lifecycle::{
    AbortCause, Detection, EventKind, ExitReason, GenerationState, LeaderCause, LockOp, RunEnd,
    RunState, StartKind, WorkerState,
};
pub use observer::Observer;
pub use operator::OperatorLock;
pub use process::{Identity, Signal};
pub use region::{Capacities, Opened};
pub use registry::{
    GenerationConfig, LockHold, Options, Registry, Worker, MAX_CRASH_LOOP_INTENSITY,
};
/// The rules over a node in memory, for tests (feature `model`).
#[cfg(feature = "model")]
pub use rules::model;
pub use rules::SUPERSEDED_GRACE;
pub use snapshot::{
    Counter, CounterValue, CrashLoop, EventTally, GenerationInfo, LockHolder, Snapshot, Stats,
    Verdict, WorkerInfo,
};
