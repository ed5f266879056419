//! The C ABI of worker-manager, made for the LuaJIT binding `resty.worker.manager`.
//!
//! Conventions, for every function:
//! - the return value is a status code, `WM_OK` (0) or one of the `WM_ERR_*`
//!   codes, which map one-to-one to the library's errors;
//! - every function that can fail takes `errbuf` and `errbuf_len` last, as Kong's
//!   atc-router does: a buffer the caller owns and its capacity (`*errbuf_len` on
//!   entry). On failure the library writes the message there, NUL-terminated and
//!   cut to fit, and sets `*errbuf_len` to its length. The library never hands out
//!   a pointer to a message of its own, so no message can be read after it is freed.
//!   `errbuf` may be NULL to ignore the message;
//! - a panic never crosses the boundary: it becomes `WM_ERR_PANIC`.
//!
//! State is per process (a registry handle, this process's worker, the events of
//! the last operations), kept in thread-local storage of the thread that calls: nginx
//! runs Lua on one thread per process. A `fork` child (an nginx worker) inherits it,
//! which is how workers use the registry the master mapped without opening the file.
//!
//! Lifecycle operations do not run callbacks: they append their events to the
//! process's event buffer, which the caller reads (`wm_events_count`,
//! `wm_event_get`) and runs its own callbacks on, between `wm_lock` and
//! `wm_unlock`, so that callbacks run under the registry lock.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use worker_manager::{
    exposition, Error, Event, GenerationConfig, LockHold, Options, Registry, Snapshot, Worker,
};

/// The version of this ABI; the Lua side refuses a library with another one.
pub const WM_ABI_VERSION: u32 = 4;

pub const WM_OK: c_int = 0;
pub const WM_ERR_IO: c_int = 1;
pub const WM_ERR_SYMLINK: c_int = 2;
pub const WM_ERR_NOT_REGULAR_FILE: c_int = 3;
pub const WM_ERR_FOREIGN_OWNER: c_int = 4;
pub const WM_ERR_WORLD_WRITABLE: c_int = 5;
pub const WM_ERR_NO_SPACE: c_int = 6;
pub const WM_ERR_TRUNCATED: c_int = 7;
pub const WM_ERR_NOT_INITIALISED: c_int = 8;
pub const WM_ERR_FOREIGN_MAGIC: c_int = 9;
pub const WM_ERR_NEWER_LAYOUT: c_int = 10;
pub const WM_ERR_OLDER_LAYOUT: c_int = 11;
pub const WM_ERR_INCOMPATIBLE: c_int = 12;
pub const WM_ERR_LOCK_TIMEOUT: c_int = 13;
pub const WM_ERR_LOCK_NOT_RECOVERABLE: c_int = 14;
pub const WM_ERR_OS: c_int = 15;
pub const WM_ERR_IN_USE: c_int = 16;
pub const WM_ERR_CAPACITY: c_int = 17;
pub const WM_ERR_INVALID_ARGUMENT: c_int = 18;
pub const WM_ERR_UNKNOWN_GENERATION: c_int = 19;
pub const WM_ERR_NOT_REGISTERED: c_int = 20;
/// No registry is open in this process (`wm_open` first).
pub const WM_ERR_NOT_OPEN: c_int = 21;
/// `wm_unlock` without a matching `wm_lock`.
pub const WM_ERR_NOT_LOCKED: c_int = 22;
/// This process has no registered worker, or already has one.
pub const WM_ERR_WORKER: c_int = 23;
/// An index out of range of the event buffer or the snapshot.
pub const WM_ERR_RANGE: c_int = 24;
/// A bug: a panic was caught at the boundary.
pub const WM_ERR_PANIC: c_int = 25;
/// `wm_open` of the path already open, which no longer names the mapped file (it
/// was removed or replaced): the registry stays open and usable; a warning.
pub const WM_ERR_REPLACED: c_int = 26;

/// `wm_event.flags`: the event is delivered again, because the process that had it
/// delivered to its callbacks died before they all returned.
pub const WM_EVENT_REDELIVERED: u32 = 2;

/// One event, as the library's `Encoded` fields plus its sequence number: counts of
/// `-1` mean `nil`; `detail` is the code of the start kind, exit reason, detection,
/// abort cause or lock operation, by `kind`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct wm_event {
    pub seq: u64,
    pub time_ns: u64,
    pub kind: u32,
    pub detail: u32,
    pub generation: u64,
    pub pid: u32,
    pub index: i32,
    pub n_prev: i32,
    pub n_mine: i32,
    pub n_next: i32,
    /// The replaced worker of a respawn, the detecting process of a crash, the dead
    /// holder of a lock recovery.
    pub other_pid: u32,
    /// Bit 0: a respawn (worker_start) or a death while holding the lock (crash);
    /// `WM_EVENT_REDELIVERED`: delivered again.
    pub flags: u32,
    /// For master_start: the previous run's end (0 none, 1 clean, 2 unclean); for
    /// hang and recover: milliseconds.
    pub value: u64,
}

/// A tracked generation of a snapshot.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct wm_generation {
    pub id: u64,
    pub state: u32,
    pub kind: u32,
    pub previous_run: u32,
    pub master_pid: u32,
    pub expected_workers: u32,
    pub live_workers: u32,
    pub exit_reason: u32,
    pub workers_started: u64,
    pub respawns: u64,
    pub crashes: u64,
    pub registered_ns: u64,
}

/// A worker slot in use in a snapshot (a live worker, an exiting one, a tombstone).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct wm_worker {
    pub generation: u64,
    pub pid: u32,
    pub index: u32,
    pub state: u32,
    pub hung: u32,
    pub replaces_pid: u32,
    /// Dead workers of the same generation and index before this one.
    pub respawns: u32,
    pub heartbeat_age_ms: u64,
    pub registered_ns: u64,
}

#[derive(Default)]
struct State {
    registry: Option<&'static Registry>,
    holds: Vec<LockHold<'static>>,
    /// This process's worker, with the registry it registered in: its heartbeats and
    /// exit go there even after `wm_open` moved the process to another path.
    worker: Option<(&'static Registry, Worker)>,
    events: Vec<wm_event>,
    snapshot: Option<Snapshot>,
    /// The last metrics text.
    metrics: String,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// A failure at the boundary: a status code and its message.
struct Failure(c_int, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match e {
            Error::Io { .. } => WM_ERR_IO,
            Error::Symlink { .. } => WM_ERR_SYMLINK,
            Error::NotRegularFile { .. } => WM_ERR_NOT_REGULAR_FILE,
            Error::ForeignOwner { .. } => WM_ERR_FOREIGN_OWNER,
            Error::WorldWritable { .. } => WM_ERR_WORLD_WRITABLE,
            Error::NoSpace { .. } => WM_ERR_NO_SPACE,
            Error::Truncated { .. } => WM_ERR_TRUNCATED,
            Error::NotInitialised { .. } => WM_ERR_NOT_INITIALISED,
            Error::ForeignMagic { .. } => WM_ERR_FOREIGN_MAGIC,
            Error::NewerLayout { .. } => WM_ERR_NEWER_LAYOUT,
            Error::OlderLayout { .. } => WM_ERR_OLDER_LAYOUT,
            Error::Incompatible { .. } => WM_ERR_INCOMPATIBLE,
            Error::LockTimeout { .. } => WM_ERR_LOCK_TIMEOUT,
            Error::LockNotRecoverable => WM_ERR_LOCK_NOT_RECOVERABLE,
            Error::Os { .. } => WM_ERR_OS,
            Error::InUse { .. } => WM_ERR_IN_USE,
            Error::CapacityExhausted { .. } => WM_ERR_CAPACITY,
            Error::InvalidArgument { .. } => WM_ERR_INVALID_ARGUMENT,
            Error::UnknownGeneration(_) => WM_ERR_UNKNOWN_GENERATION,
            Error::NotRegistered(_) => WM_ERR_NOT_REGISTERED,
        };
        Failure(code, e.to_string())
    }
}

type Outcome = Result<(), Failure>;

/// Where a failing call writes its message: a buffer of the caller's and its
/// capacity, which receives the message's length.
#[derive(Clone, Copy)]
struct ErrBuf {
    buf: *mut c_char,
    len: *mut usize,
}

impl ErrBuf {
    fn new(buf: *mut c_char, len: *mut usize) -> ErrBuf {
        ErrBuf { buf, len }
    }

    /// Copies `message`, cut to the capacity (at a character boundary) and
    /// NUL-terminated.
    fn write(self, message: &str) {
        if self.buf.is_null() || self.len.is_null() {
            return;
        }
        // SAFETY: the caller passes a valid `len` with a non-NULL `buf`.
        let capacity = unsafe { *self.len };
        let Some(room) = capacity.checked_sub(1) else {
            return;
        };
        let mut n = message.len().min(room);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: `buf` is valid for `capacity` bytes (the caller's promise), and
        // `n + 1 <= capacity`; the message is a distinct Rust string.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), self.buf.cast::<u8>(), n);
            *self.buf.add(n) = 0;
            *self.len = n;
        }
    }
}

/// Runs `body` with the process state, catching panics and writing the error
/// message to `err`.
fn call(err: ErrBuf, body: impl FnOnce(&mut State) -> Outcome) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        STATE.with(|state| body(&mut state.borrow_mut()))
    }))
    .unwrap_or_else(|_| {
        Err(Failure(
            WM_ERR_PANIC,
            "internal error (panic) in worker-manager".into(),
        ))
    });
    match outcome {
        Ok(()) => WM_OK,
        Err(Failure(code, message)) => {
            err.write(&message.replace('\0', " "));
            code
        }
    }
}

fn registry(state: &State) -> Result<&'static Registry, Failure> {
    state.registry.ok_or_else(|| {
        Failure(
            WM_ERR_NOT_OPEN,
            "no registry is open in this process: call open first".into(),
        )
    })
}

fn no_worker() -> Failure {
    Failure(
        WM_ERR_WORKER,
        "this process has no registered worker".into(),
    )
}

fn encode(event: &Event) -> wm_event {
    let e = event.encode();
    let redelivered = if event.redelivered {
        WM_EVENT_REDELIVERED
    } else {
        0
    };
    wm_event {
        seq: event.seq,
        time_ns: e.time_ns,
        kind: e.kind,
        detail: e.detail,
        generation: e.generation,
        pid: e.pid,
        index: e.index,
        n_prev: e.n_prev,
        n_mine: e.n_mine,
        n_next: e.n_next,
        other_pid: e.other_pid,
        flags: e.flags | redelivered,
        value: e.value,
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The ABI version of this library (`WM_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn wm_abi_version() -> u32 {
    WM_ABI_VERSION
}

/// Opens (creating it if needed) the registry at `path` for this process. Opening
/// the path already open is a no-op, so that a reloaded configuration in the same
/// master keeps its handle; if the path no longer names that file, the handle is kept
/// and `WM_ERR_REPLACED` says so.
///
/// # Safety
///
/// `path` is a NUL-terminated string; `errbuf` is NULL, or valid for
/// `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_open(
    path: *const c_char,
    lock_timeout_ms: u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        if path.is_null() {
            return Err(Failure(
                WM_ERR_INVALID_ARGUMENT,
                "invalid path: NULL".into(),
            ));
        }
        // SAFETY: guaranteed by the caller.
        let path = unsafe { CStr::from_ptr(path) };
        let path = PathBuf::from(
            path.to_str()
                .map_err(|_| Failure(WM_ERR_INVALID_ARGUMENT, "invalid path: not UTF-8".into()))?,
        );
        if let Some(registry) = state.registry.filter(|r| r.path() == path) {
            if registry.is_at_path() {
                return Ok(());
            }
            return Err(Failure(
                WM_ERR_REPLACED,
                format!(
                    "registry {} was removed or replaced while in use; this node goes on \
                     with the registry it has mapped, which readers of the path no longer \
                     see until nginx restarts",
                    path.display()
                ),
            ));
        }
        let options = Options {
            lock_timeout: ms(lock_timeout_ms),
            ..Options::default()
        };
        // Leaked on purpose: the mapping must outlive every worker of this process
        // tree, and a fork child's robust-list entries point into it.
        state.registry = Some(Box::leak(Box::new(Registry::open(&path, &options)?)));
        Ok(())
    })
}

/// Takes the registry lock (re-entrant); the events of a repair, if the previous
/// holder died, are appended to the event buffer.
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_lock(errbuf: *mut c_char, errbuf_len: *mut usize) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        let (hold, recovered) = registry(state)?.hold_lock()?;
        state.holds.push(hold);
        state.events.extend(recovered.iter().map(encode));
        Ok(())
    })
}

/// Takes the registry lock if it is free right now (re-entrant, like `wm_lock`):
/// `*acquired` is 1 when it was taken, to be released with `wm_unlock`, and 0
/// without waiting when another process holds it.
///
/// # Safety
///
/// `acquired` is valid for a write; `errbuf` is NULL, or valid for
/// `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_try_lock(
    acquired: *mut c_int,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        let taken = registry(state)?.try_hold_lock()?;
        // SAFETY: guaranteed by the caller.
        unsafe { *acquired = c_int::from(taken.is_some()) };
        if let Some((hold, recovered)) = taken {
            state.holds.push(hold);
            state.events.extend(recovered.iter().map(encode));
        }
        Ok(())
    })
}

/// Releases one `wm_lock` or successful `wm_try_lock`.
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_unlock(errbuf: *mut c_char, errbuf_len: *mut usize) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        match state.holds.pop() {
            Some(hold) => {
                drop(hold);
                Ok(())
            }
            None => Err(Failure(
                WM_ERR_NOT_LOCKED,
                "unlock without a lock held".into(),
            )),
        }
    })
}

/// Registers a generation whose master is this process; `*id` receives its id.
///
/// # Safety
///
/// `id` is valid for a write; `errbuf` is NULL, or valid for
/// `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_register_generation(
    interval_ms: u64,
    failed_ms: u64,
    start_timeout_ms: u64,
    expected_workers: u32,
    id: *mut u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        let config = GenerationConfig {
            interval: ms(interval_ms),
            failed: ms(failed_ms),
            start_timeout: ms(start_timeout_ms),
            expected_workers,
        };
        let registry = registry(state)?;
        let events = &mut state.events;
        let generation = registry.register_generation(&config, |e| events.push(encode(e)))?;
        if !id.is_null() {
            // SAFETY: guaranteed by the caller.
            unsafe { *id = generation };
        }
        Ok(())
    })
}

/// Registers this process as worker `index` of `generation`.
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_register_worker(
    generation: u64,
    index: u32,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        if state.worker.is_some() {
            return Err(Failure(
                WM_ERR_WORKER,
                "this process already has a registered worker".into(),
            ));
        }
        let registry = registry(state)?;
        let events = &mut state.events;
        let worker = registry.register_worker(generation, index, |e| events.push(encode(e)))?;
        state.worker = Some((registry, worker));
        Ok(())
    })
}

/// Records a heartbeat of this process's worker: no lock, no system call.
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_heartbeat(errbuf: *mut c_char, errbuf_len: *mut usize) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        // Without a registry open, that is the error, as for every other call.
        registry(state)?;
        let (registry, worker) = state.worker.as_ref().ok_or_else(no_worker)?;
        registry.heartbeat(worker)?;
        Ok(())
    })
}

/// This process's worker began a graceful shutdown (nginx: the premature timer).
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_announce_exit(errbuf: *mut c_char, errbuf_len: *mut usize) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        registry(state)?;
        let (registry, worker) = state.worker.as_ref().ok_or_else(no_worker)?;
        let events = &mut state.events;
        registry.announce_exit(worker, |e| events.push(encode(e)))?;
        Ok(())
    })
}

/// This process's worker exits: `graceful` non-zero for a graceful shutdown, zero
/// for a fast stop.
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_exit_worker(
    graceful: c_int,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        registry(state)?;
        let (registry, worker) = state.worker.take().ok_or_else(no_worker)?;
        let events = &mut state.events;
        registry.exit_worker(worker, graceful != 0, |e| events.push(encode(e)))?;
        Ok(())
    })
}

/// Looks for dead workers, hangs, deserted and stalled generations.
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_sweep(errbuf: *mut c_char, errbuf_len: *mut usize) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        let registry = registry(state)?;
        let events = &mut state.events;
        registry.sweep(|e| events.push(encode(e)))?;
        Ok(())
    })
}

/// The number of events in the buffer.
#[no_mangle]
pub extern "C" fn wm_events_count() -> u32 {
    catch_unwind(|| STATE.with(|s| s.borrow().events.len() as u32)).unwrap_or(0)
}

/// Copies event `i` of the buffer into `*out`.
///
/// # Safety
///
/// `out` is valid for a write; `errbuf` is NULL, or valid for `*errbuf_len` bytes
/// with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_event_get(
    i: u32,
    out: *mut wm_event,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        let event = state
            .events
            .get(i as usize)
            .ok_or_else(|| Failure(WM_ERR_RANGE, format!("no event {i}")))?;
        // SAFETY: guaranteed by the caller.
        unsafe { *out = *event };
        Ok(())
    })
}

/// Records that the callbacks of event `seq` have run (the caller holds the lock, by
/// `wm_lock` or `wm_try_lock`), so that it is not delivered again should this
/// process die before `wm_unlock`. Events of node-level kinds whose callbacks never
/// ran because their process died are delivered again to the next locker, flagged
/// `WM_EVENT_REDELIVERED`.
///
/// # Safety
///
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_event_done(
    seq: u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        if state.holds.is_empty() {
            return Err(Failure(
                WM_ERR_NOT_LOCKED,
                "an event is done only under the lock".into(),
            ));
        }
        registry(state)?.delivered(seq);
        Ok(())
    })
}

/// Empties the event buffer.
#[no_mangle]
pub extern "C" fn wm_events_clear() {
    let _ = catch_unwind(|| STATE.with(|s| s.borrow_mut().events.clear()));
}

/// Takes a snapshot of the registry without waiting for the lock: read lock-free
/// (as `wm_metrics` and the CLI read it) unless this process holds the lock (inside
/// a callback), then under it. `*generations` and `*workers` receive the numbers of
/// entries to read with `wm_snapshot_generation` and `wm_snapshot_worker`,
/// `*run_state` the run state code, `*next_seq` the next journal sequence number,
/// and `*consistent` 0 when a writer died in the middle of a change (the copy may
/// mix two states).
///
/// # Safety
///
/// The out pointers are valid for writes; `errbuf` is NULL, or valid for
/// `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_snapshot(
    generations: *mut u32,
    workers: *mut u32,
    run_state: *mut u32,
    next_seq: *mut u64,
    consistent: *mut c_int,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        let snapshot = registry(state)?.status()?;
        // SAFETY: guaranteed by the caller.
        unsafe {
            *generations = snapshot.generations.len() as u32;
            *workers = snapshot.workers.len() as u32;
            *run_state = snapshot.run_state.map_or(u32::MAX, |r| r.code());
            *next_seq = snapshot.next_seq;
            *consistent = c_int::from(snapshot.consistent);
        }
        state.snapshot = Some(snapshot);
        Ok(())
    })
}

/// Renders the registry in the Prometheus text exposition format, read without the
/// lock (a scrape never waits behind a callback). `*text` points to `*len` bytes
/// (not NUL-terminated) owned by the library, valid until the next `wm_metrics`
/// call on the same thread.
///
/// # Safety
///
/// `text` and `len` are valid for writes; `errbuf` is NULL, or valid for
/// `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_metrics(
    text: *mut *const c_char,
    len: *mut usize,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), |state| {
        let registry = registry(state)?;
        state.metrics = exposition::prometheus(&registry.observe(), registry.path());
        // SAFETY: guaranteed by the caller.
        unsafe {
            *text = state.metrics.as_ptr().cast();
            *len = state.metrics.len();
        }
        Ok(())
    })
}

fn nanos_since_epoch(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Copies entry `i` of the last snapshot, as `pick` finds and converts it, to `*out`.
///
/// # Safety
///
/// `out` is valid for a write; `err` as the caller's own contract says.
unsafe fn copy_entry<T>(
    what: &str,
    i: u32,
    out: *mut T,
    err: ErrBuf,
    pick: impl FnOnce(&Snapshot, usize) -> Option<T>,
) -> c_int {
    call(err, |state| {
        let entry = state
            .snapshot
            .as_ref()
            .and_then(|s| pick(s, i as usize))
            .ok_or_else(|| Failure(WM_ERR_RANGE, format!("no {what} {i} in the snapshot")))?;
        // SAFETY: guaranteed by the caller.
        unsafe { *out = entry };
        Ok(())
    })
}

/// Copies generation `i` of the last snapshot into `*out`.
///
/// # Safety
///
/// `out` is valid for a write; `errbuf` is NULL, or valid for `*errbuf_len` bytes
/// with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_snapshot_generation(
    i: u32,
    out: *mut wm_generation,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    let code = |c: Option<u32>| c.unwrap_or(0);
    let err = ErrBuf::new(errbuf, errbuf_len);
    // SAFETY: guaranteed by the caller.
    unsafe {
        copy_entry("generation", i, out, err, |s, i| {
            s.generations.get(i).map(|g| wm_generation {
                id: g.id,
                state: code(g.state.map(|s| s.code())),
                kind: code(g.kind.map(|k| k.code())),
                previous_run: code(g.previous_run.map(|r| r.code())),
                master_pid: g.master_pid,
                expected_workers: g.expected_workers,
                live_workers: g.live_workers,
                exit_reason: code(g.exit_reason.map(|r| r.code())),
                workers_started: g.workers_started,
                respawns: g.respawns,
                crashes: g.crashes,
                registered_ns: nanos_since_epoch(g.registered),
            })
        })
    }
}

/// Copies worker `i` of the last snapshot into `*out`.
///
/// # Safety
///
/// `out` is valid for a write; `errbuf` is NULL, or valid for `*errbuf_len` bytes
/// with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_snapshot_worker(
    i: u32,
    out: *mut wm_worker,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    let err = ErrBuf::new(errbuf, errbuf_len);
    // SAFETY: guaranteed by the caller.
    unsafe {
        copy_entry("worker", i, out, err, |s, i| {
            s.workers.get(i).map(|w| wm_worker {
                generation: w.id.generation,
                pid: w.id.pid,
                index: w.id.index,
                state: w.state.code(),
                hung: w.hung as u32,
                replaces_pid: w.replaces_pid.unwrap_or(0),
                respawns: w.respawns,
                heartbeat_age_ms: w.heartbeat_age.as_millis() as u64,
                registered_ns: nanos_since_epoch(w.registered),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker_manager::{Capacities, Observer};

    use std::ffi::CString;

    fn c_path(path: &std::path::Path) -> CString {
        CString::new(path.to_str().unwrap()).unwrap()
    }

    /// Found by the `c_abi` fuzz target: after `wm_open` of another path, the worker
    /// went to the new registry, where its slot index could be out of range (a
    /// panic) or another slot (the exit failed and the worker could never leave).
    #[test]
    fn a_worker_stays_with_its_registry_when_another_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first.wm"), dir.path().join("second.wm"));
        let one_slot = Options {
            capacities: Capacities {
                generations: 1,
                workers: 1,
                events: 4,
            },
            ..Options::default()
        };
        drop(Registry::open(&second, &one_slot).unwrap());
        let mut buf = [0 as c_char; 256];
        let mut len = 0usize;
        let mut err = || {
            len = buf.len();
            (buf.as_mut_ptr(), &mut len as *mut usize)
        };
        let mut generation = 0;
        // SAFETY: valid C strings, out-parameters and error buffers throughout.
        unsafe {
            let (b, l) = err();
            assert_eq!(wm_open(c_path(&first).as_ptr(), 1000, b, l), WM_OK);
            let (b, l) = err();
            assert_eq!(
                wm_register_generation(10_000, 5_000, 60_000, 2, &mut generation, b, l),
                WM_OK
            );
        }
        // A worker of another thread dies without exiting: its tombstone keeps slot
        // 0, so this thread's worker takes slot 1, beyond the second registry's one.
        let path = first.clone();
        std::thread::spawn(move || {
            let registry = Box::leak(Box::new(
                Registry::open(&path, &Options::default()).unwrap(),
            ));
            registry.register_worker(generation, 0, |_| {}).unwrap();
        })
        .join()
        .unwrap();
        // SAFETY: as above.
        unsafe {
            let (b, l) = err();
            assert_eq!(wm_register_worker(generation, 1, b, l), WM_OK);
            let (b, l) = err();
            assert_eq!(wm_open(c_path(&second).as_ptr(), 1000, b, l), WM_OK);
            let (b, l) = err();
            assert_eq!(wm_heartbeat(b, l), WM_OK);
            let (b, l) = err();
            assert_eq!(wm_announce_exit(b, l), WM_OK);
            let (b, l) = err();
            assert_eq!(wm_exit_worker(1, b, l), WM_OK);
        }
        let snapshot = Observer::open(&first).unwrap().snapshot();
        assert_eq!(snapshot.live_workers().count(), 0);
        assert!(snapshot.workers.iter().all(|w| w.id.index == 0));
    }
}
