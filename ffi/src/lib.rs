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
//! State lives in handles (`wm_open`, `wm_close`): a registry, the worker registered
//! through the handle, the events of its last operations, its last snapshot. nginx
//! runs one Lua VM per subsystem (`http`, `stream`) in the same processes; each
//! opens its own handle, on its own registry, and gets the events it would get
//! alone. A `fork` child (an nginx worker) inherits the handles of its parent, which
//! is how workers use the registry the master mapped without opening the file.
//! Handles of one process on the same registry share one mapping, which is unmapped
//! when the last is closed; handles are used by one thread at a time.
//!
//! Lifecycle operations do not run callbacks: they append their events to the
//! handle's event buffer, which the caller reads (`wm_events_count`,
//! `wm_event_get`) and runs its own callbacks on, between `wm_lock` and
//! `wm_unlock`, so that callbacks run under the registry lock.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::rc::{Rc, Weak};

use worker_manager::lifecycle::{
    AbortCause, Detection, EventKind, ExitReason, GenerationState, LeaderCause, LockOp, RunEnd,
    RunState, StartKind, WorkerState,
};
use worker_manager::{
    clock, exposition, naming, Encoded, Error, Event, GenerationConfig, Options, Registry,
    Snapshot, Worker,
};

/// The version of this ABI; the Lua side refuses a library with another one.
pub const WM_ABI_VERSION: u32 = 7;

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
/// No handle: a NULL `wm_handle` (`wm_open` first).
pub const WM_ERR_NOT_OPEN: c_int = 21;
/// `wm_unlock` without a matching `wm_lock`.
pub const WM_ERR_NOT_LOCKED: c_int = 22;
/// The handle has no registered worker, or already has one.
pub const WM_ERR_WORKER: c_int = 23;
/// An index out of range of the event buffer or the snapshot.
pub const WM_ERR_RANGE: c_int = 24;
/// A bug: a panic was caught at the boundary.
pub const WM_ERR_PANIC: c_int = 25;
/// `wm_open` of a path this process has open, which no longer names the mapped file
/// (it was removed or replaced): the handle is returned, on the registry this
/// process has mapped; a warning.
pub const WM_ERR_REPLACED: c_int = 26;
/// `wm_open` of a registry that another subsystem of this process (another Lua VM:
/// nginx's `http` and `stream`) has open: each needs its own.
pub const WM_ERR_SHARED: c_int = 27;

/// `wm_status.verdict`: the server committed the configuration.
pub const WM_VERDICT_COMMITTED: u32 = 1;
/// `wm_status.verdict`: the server gave the configuration up.
pub const WM_VERDICT_FAILED: u32 = 2;

/// The largest `crash_loop_intensity` of `wm_register_generation`.
pub const WM_MAX_CRASH_LOOP_INTENSITY: u32 = 10;
const _: () = assert!(WM_MAX_CRASH_LOOP_INTENSITY == worker_manager::MAX_CRASH_LOOP_INTENSITY);

/// `wm_name`: the event kinds (`wm_event.kind`).
pub const WM_NAMES_EVENT_KIND: u32 = 1;
/// `wm_name`: why a generation started (`wm_event.detail` of master_start,
/// `wm_generation.kind`).
pub const WM_NAMES_START_KIND: u32 = 2;
/// `wm_name`: how a node run ended (`wm_event.value` of master_start,
/// `wm_generation.previous_run`).
pub const WM_NAMES_RUN_END: u32 = 3;
/// `wm_name`: why workers exit (`wm_event.detail` of worker_exit and master_exit,
/// `wm_generation.exit_reason`).
pub const WM_NAMES_EXIT_REASON: u32 = 4;
/// `wm_name`: how a death was noticed (`wm_event.detail` of worker_crash).
pub const WM_NAMES_DETECTION: u32 = 5;
/// `wm_name`: why a generation was given up (`wm_event.detail` of generation_abort).
pub const WM_NAMES_ABORT_CAUSE: u32 = 6;
/// `wm_name`: what the lock's holder was doing (`wm_event.detail` of lock_recovered).
pub const WM_NAMES_LOCK_OP: u32 = 7;
/// `wm_name`: the states of a generation (`wm_generation.state`).
pub const WM_NAMES_GENERATION_STATE: u32 = 8;
/// `wm_name`: the states of a worker slot (`wm_worker.state`).
pub const WM_NAMES_WORKER_STATE: u32 = 9;
/// `wm_name`: the states of a node run (`wm_status.run_state`).
pub const WM_NAMES_RUN_STATE: u32 = 10;
/// `wm_name`: why the leadership changed (`wm_event.detail` of leader_elected,
/// `wm_leader.cause`).
pub const WM_NAMES_LEADER_CAUSE: u32 = 11;

/// One event: the core's fixed fields (`worker_manager::Encoded`), which the header
/// declares as `struct wm_event`.
#[allow(non_camel_case_types)]
pub type wm_event = Encoded;

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
    /// When the server committed the configuration; 0: not (yet).
    pub committed_ns: u64,
}

/// The registry as a whole, from `wm_snapshot`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct wm_status {
    /// Entries to read with `wm_snapshot_generation` and `wm_snapshot_worker`.
    pub generations: u32,
    pub workers: u32,
    /// The run state code (`UINT32_MAX`: unknown).
    pub run_state: u32,
    /// 0 when a writer died in the middle of a change: the copy may mix two states.
    pub consistent: c_int,
    /// The sequence number the next journal entry gets.
    pub next_seq: u64,
    /// The last verdict on a configuration: its generation (0: none yet),
    /// `WM_VERDICT_COMMITTED` or `WM_VERDICT_FAILED`, and when.
    pub verdict_generation: u64,
    pub verdict: u32,
    pub verdict_ns: u64,
    /// When a configuration was last committed (0: never).
    pub last_success_ns: u64,
    /// Verdicts on reloads and upgrades, and the failed ones among them.
    pub reload_verdicts: u64,
    pub reload_failures: u64,
    /// Worker indexes in a crash loop, to read with `wm_snapshot_crash_loop`.
    pub crash_loops: u32,
}

/// A worker index in a crash loop, in a snapshot.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct wm_crash_loop {
    pub index: u32,
    /// The index's last crashed worker.
    pub last_pid: u32,
    pub last_generation: u64,
    /// Its crashes within the crash-loop period.
    pub recent_crashes: u32,
    /// When the loop began.
    pub since_ns: u64,
}

/// The node's leader, from `wm_leader`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct wm_leader {
    /// Leadership changes so far (0: there never was a leader).
    pub term: u64,
    /// The cause code of the last change (0: none yet).
    pub cause: u32,
    /// The leader's pid; 0 when no worker leads.
    pub pid: u32,
    pub generation: u64,
    /// The leader's index; -1 when no worker leads.
    pub index: i32,
    /// 1 when the handle's worker leads.
    pub mine: c_int,
    /// The counts of the handle's worker's generation, as its callbacks get them
    /// (-1: nil); all -1 in a process with no worker.
    pub n_prev: i32,
    pub n_mine: i32,
    pub n_next: i32,
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

/// A tracker: one Lua VM's view of one registry.
#[allow(non_camel_case_types)]
pub struct wm_handle {
    registry: Rc<Registry>,
    /// How many `wm_lock`/`wm_try_lock` of this handle are not yet released.
    holds: u32,
    /// The worker registered through this handle.
    worker: Option<Worker>,
    events: Vec<Encoded>,
    snapshot: Option<Snapshot>,
    /// The last metrics text.
    metrics: String,
}

/// A registry this process has mapped, and the subsystem whose handles use it.
struct Mapped {
    registry: Weak<Registry>,
    subsystem: String,
}

thread_local! {
    static MAPPED: RefCell<Vec<Mapped>> = const { RefCell::new(Vec::new()) };
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
            // A variant newer than this table; its message still says what failed.
            _ => WM_ERR_OS,
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

/// Runs `body`, catching panics and writing the error message to `err`.
fn call(err: ErrBuf, body: impl FnOnce() -> Outcome) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
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

/// Runs `body` with the handle `h`, as [`call`] does.
///
/// # Safety
///
/// `h` is NULL or a handle from `wm_open`, not closed, used by no other thread.
unsafe fn with_handle(
    h: *mut wm_handle,
    err: ErrBuf,
    body: impl FnOnce(&mut wm_handle) -> Outcome,
) -> c_int {
    call(err, || {
        // SAFETY: guaranteed by the caller.
        let handle = unsafe { h.as_mut() }.ok_or_else(|| {
            Failure(
                WM_ERR_NOT_OPEN,
                "no handle (NULL): open the registry first".into(),
            )
        })?;
        body(handle)
    })
}

fn no_worker() -> Failure {
    Failure(WM_ERR_WORKER, "this handle has no registered worker".into())
}

/// Runs `op`, a locked operation of the handle's worker, its events queued for the
/// caller.
fn worker_operation(
    handle: &mut wm_handle,
    op: impl FnOnce(&Registry, &Worker, &mut dyn FnMut(&Event)) -> worker_manager::Result<()>,
) -> Result<(), Failure> {
    let worker = handle.worker.as_ref().ok_or_else(no_worker)?;
    let events = &mut handle.events;
    op(&handle.registry, worker, &mut |e| events.push(e.encode()))?;
    Ok(())
}

/// A C string argument as UTF-8.
///
/// # Safety
///
/// `s` is NULL or a NUL-terminated string.
unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if s.is_null() {
        return Err(Failure(
            WM_ERR_INVALID_ARGUMENT,
            format!("invalid {what}: NULL"),
        ));
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(s) }.to_str().map_err(|_| {
        Failure(
            WM_ERR_INVALID_ARGUMENT,
            format!("invalid {what}: not UTF-8"),
        )
    })
}

/// The registry at `path` for `subsystem`: the one this process has mapped, or a
/// new mapping. The returned failure, if any, is a warning that goes with a registry
/// (`WM_ERR_REPLACED`).
fn map(
    path: PathBuf,
    subsystem: &str,
    lock_timeout_ms: u64,
) -> Result<(Rc<Registry>, Option<Failure>), Failure> {
    MAPPED.with(|mapped| {
        let mut mapped = mapped.borrow_mut();
        mapped.retain(|m| m.registry.strong_count() > 0);
        let found = mapped.iter().find_map(|m| {
            let registry = m.registry.upgrade()?;
            (registry.path() == path).then_some((registry, m.subsystem.as_str()))
        });
        if let Some((registry, user)) = found {
            if user != subsystem {
                return Err(Failure(
                    WM_ERR_SHARED,
                    format!(
                        "registry {} is already used by the {user} subsystem of this \
                         server: give the {subsystem} subsystem its own registry \
                         (another shm or path)",
                        path.display()
                    ),
                ));
            }
            // A reloaded configuration may wait for the lock longer or shorter.
            registry.set_lock_timeout(clock::from_millis(lock_timeout_ms))?;
            let warning = (!registry.is_at_path()).then(|| {
                Failure(
                    WM_ERR_REPLACED,
                    format!(
                        "registry {} was removed or replaced while in use; this node goes \
                         on with the registry it has mapped, which readers of the path no \
                         longer see until nginx restarts",
                        path.display()
                    ),
                )
            });
            return Ok((registry, warning));
        }
        let options = Options {
            lock_timeout: clock::from_millis(lock_timeout_ms),
            ..Options::default()
        };
        let registry = Rc::new(Registry::open(&path, &options)?);
        mapped.push(Mapped {
            registry: Rc::downgrade(&registry),
            subsystem: subsystem.to_string(),
        });
        Ok((registry, None))
    })
}

/// The ABI version of this library (`WM_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn wm_abi_version() -> u32 {
    WM_ABI_VERSION
}

/// The code and name of entry `i` of a list of variants, as `wm_name` hands them out.
fn nth<T: Copy>(
    all: &[T],
    i: usize,
    code: fn(T) -> u32,
    name: fn(T) -> &'static str,
) -> Option<(u32, &'static str)> {
    all.get(i).map(|&v| (code(v), name(v)))
}

/// Entry `i` of the codes and names of `names` (a `WM_NAMES_*`).
fn name(names: u32, i: usize) -> Option<(u32, &'static str)> {
    match names {
        WM_NAMES_EVENT_KIND => nth(EventKind::ALL, i, EventKind::code, EventKind::as_str),
        WM_NAMES_START_KIND => nth(StartKind::ALL, i, StartKind::code, StartKind::as_str),
        WM_NAMES_RUN_END => nth(RunEnd::ALL, i, RunEnd::code, RunEnd::as_str),
        WM_NAMES_EXIT_REASON => nth(ExitReason::ALL, i, ExitReason::code, ExitReason::as_str),
        WM_NAMES_DETECTION => nth(Detection::ALL, i, Detection::code, Detection::as_str),
        WM_NAMES_ABORT_CAUSE => nth(AbortCause::ALL, i, AbortCause::code, AbortCause::as_str),
        WM_NAMES_LOCK_OP => nth(LockOp::ALL, i, LockOp::code, LockOp::as_str),
        WM_NAMES_GENERATION_STATE => nth(
            GenerationState::ALL,
            i,
            GenerationState::code,
            GenerationState::as_str,
        ),
        WM_NAMES_WORKER_STATE => nth(WorkerState::ALL, i, WorkerState::code, WorkerState::as_str),
        WM_NAMES_RUN_STATE => nth(RunState::ALL, i, RunState::code, RunState::as_str),
        WM_NAMES_LEADER_CAUSE => nth(LeaderCause::ALL, i, LeaderCause::code, LeaderCause::as_str),
        _ => None,
    }
}

/// Entry `i` (from 0) of the codes of `names` (a `WM_NAMES_*`) and their names, the
/// library's own: `*code` receives the code, `*len` the length of the name, which is
/// returned: static text, not NUL-terminated. NULL past the last entry, or for
/// unknown `names`. The Lua module builds its tables of names with it.
///
/// # Safety
///
/// `code` and `len` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn wm_name(
    names: u32,
    i: u32,
    code: *mut u32,
    len: *mut usize,
) -> *const c_char {
    let Some((c, text)) = name(names, i as usize) else {
        return std::ptr::null();
    };
    // SAFETY: guaranteed by the caller.
    unsafe {
        if let Some(code) = code.as_mut() {
            *code = c;
        }
        if let Some(len) = len.as_mut() {
            *len = text.len();
        }
    }
    text.as_ptr().cast()
}

/// Writes the registry path for the name `shm` (`shm_len` bytes) to `path` (a
/// buffer of `*path_len` bytes, which receives the length; NUL-terminated): the path
/// used when only a name is given, one per nginx `prefix` (with its trailing slash),
/// name and `subsystem`. `WM_ERR_INVALID_ARGUMENT` for a name that cannot be part of
/// a file name, with a message that follows the name of the option ("may only hold
/// ..."); `WM_ERR_RANGE` when the buffer is too small.
///
/// # Safety
///
/// `prefix` and `subsystem` are NULL or NUL-terminated strings; `shm` is NULL or
/// valid for `shm_len` bytes; `path` is valid for `*path_len` bytes with `path_len` valid for
/// reads and writes; `errbuf` is NULL, or valid for `*errbuf_len` bytes with
/// `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_default_path(
    prefix: *const c_char,
    shm: *const c_char,
    shm_len: usize,
    subsystem: *const c_char,
    path: *mut c_char,
    path_len: *mut usize,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), || {
        if prefix.is_null() || shm.is_null() {
            return Err(Failure(
                WM_ERR_INVALID_ARGUMENT,
                "invalid prefix or shm: NULL".into(),
            ));
        }
        // SAFETY: guaranteed by the caller. A prefix is any bytes, as nginx's is.
        let prefix = unsafe { CStr::from_ptr(prefix) }.to_bytes();
        // SAFETY: guaranteed by the caller.
        let subsystem = unsafe { text(subsystem, "subsystem") }?;
        // SAFETY: guaranteed by the caller.
        let bytes = unsafe { std::slice::from_raw_parts(shm.cast::<u8>(), shm_len) };
        // Bytes that are not UTF-8 become U+FFFD, which no name may hold.
        let name = String::from_utf8_lossy(bytes);
        naming::check_name(&name).map_err(|reason| Failure(WM_ERR_INVALID_ARGUMENT, reason))?;
        let derived = naming::default_path_of_bytes(prefix, &name, subsystem);
        let derived = derived.as_os_str().as_bytes();
        // SAFETY: guaranteed by the caller.
        let capacity = unsafe { *path_len };
        if derived.len() >= capacity {
            return Err(Failure(
                WM_ERR_RANGE,
                format!(
                    "the registry path needs {} bytes, the buffer holds {capacity}",
                    derived.len() + 1
                ),
            ));
        }
        // SAFETY: `path` is valid for `capacity` bytes (the caller's promise), and
        // `derived.len() + 1 <= capacity`.
        unsafe {
            std::ptr::copy_nonoverlapping(derived.as_ptr(), path.cast::<u8>(), derived.len());
            *path.add(derived.len()) = 0;
            *path_len = derived.len();
        }
        Ok(())
    })
}

/// Opens (creating it if needed) the registry at `path` for `subsystem` (a name:
/// `http`, `stream`) and returns a new handle in `*handle`, to be closed with
/// `wm_close`. Handles of one subsystem on the same path share the process's
/// mapping (a reload's new configuration and the previous one); another subsystem
/// is refused (`WM_ERR_SHARED`). If this process has the path mapped but the path
/// no longer names that file, the handle is returned anyway and `WM_ERR_REPLACED`
/// says so.
///
/// # Safety
///
/// `path` and `subsystem` are NUL-terminated strings; `handle` is valid for a
/// write; `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len`
/// valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_open(
    path: *const c_char,
    subsystem: *const c_char,
    lock_timeout_ms: u64,
    handle: *mut *mut wm_handle,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    call(ErrBuf::new(errbuf, errbuf_len), || {
        // SAFETY: guaranteed by the caller.
        let path = PathBuf::from(unsafe { text(path, "path") }?);
        // SAFETY: guaranteed by the caller.
        let subsystem = unsafe { text(subsystem, "subsystem") }?;
        let (registry, warning) = map(path, subsystem, lock_timeout_ms)?;
        let opened = Box::new(wm_handle {
            registry,
            holds: 0,
            worker: None,
            events: Vec::new(),
            snapshot: None,
            metrics: String::new(),
        });
        // SAFETY: guaranteed by the caller.
        unsafe { *handle = Box::into_raw(opened) };
        warning.map_or(Ok(()), Err)
    })
}

/// Closes a handle: releases its lock holdings, and unmaps the registry if no other
/// handle of this process uses it. A handle whose worker is still registered keeps
/// the mapping for the life of the process (the kernel's record of the worker's
/// mutex points into it). NULL is ignored.
///
/// # Safety
///
/// `h` is NULL or a handle from `wm_open`, not closed before; it is not used after.
#[no_mangle]
pub unsafe extern "C" fn wm_close(h: *mut wm_handle) {
    if h.is_null() {
        return;
    }
    // SAFETY: guaranteed by the caller: `h` came from `Box::into_raw` in `wm_open`.
    let handle = unsafe { Box::from_raw(h) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..handle.holds {
            let _ = handle.registry.release_lock();
        }
        if handle.worker.is_some() {
            std::mem::forget(Rc::clone(&handle.registry));
        }
        drop(handle);
    }));
}

/// Takes the registry lock (re-entrant); the events of a repair, if the previous
/// holder died, are appended to the event buffer.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_lock(
    h: *mut wm_handle,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let recovered = handle
                .registry
                .acquire_lock(true)?
                .expect("a waiting acquisition holds the lock or fails");
            handle.holds += 1;
            handle.events.extend(recovered.iter().map(Event::encode));
            Ok(())
        })
    }
}

/// Takes the registry lock if it is free right now (re-entrant, like `wm_lock`):
/// `*acquired` is 1 when it was taken, to be released with `wm_unlock`, and 0
/// without waiting when another process holds it.
///
/// # Safety
///
/// `h` is NULL or an open handle; `acquired` is valid for a write; `errbuf` is
/// NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and
/// writes.
#[no_mangle]
pub unsafe extern "C" fn wm_try_lock(
    h: *mut wm_handle,
    acquired: *mut c_int,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let taken = handle.registry.acquire_lock(false)?;
            // SAFETY: guaranteed by the caller.
            *acquired = c_int::from(taken.is_some());
            if let Some(recovered) = taken {
                handle.holds += 1;
                handle.events.extend(recovered.iter().map(Event::encode));
            }
            Ok(())
        })
    }
}

/// Releases one `wm_lock` or successful `wm_try_lock` of this handle.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_unlock(
    h: *mut wm_handle,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            if handle.holds == 0 {
                return Err(Failure(
                    WM_ERR_NOT_LOCKED,
                    "unlock without a lock held".into(),
                ));
            }
            handle.registry.release_lock()?;
            handle.holds -= 1;
            Ok(())
        })
    }
}

/// Registers a generation whose master is this process; `*id` receives its id.
/// `crash_loop_intensity` (at most `WM_MAX_CRASH_LOOP_INTENSITY`, 0: off) and
/// `crash_loop_period_ms` set the node's crash-loop rule.
///
/// # Safety
///
/// `h` is NULL or an open handle; `id` is NULL or valid for a write; `errbuf` is
/// NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and
/// writes.
#[no_mangle]
pub unsafe extern "C" fn wm_register_generation(
    h: *mut wm_handle,
    interval_ms: u64,
    failed_ms: u64,
    start_timeout_ms: u64,
    expected_workers: u32,
    crash_loop_intensity: u32,
    crash_loop_period_ms: u64,
    id: *mut u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let config = GenerationConfig {
                interval: clock::from_millis(interval_ms),
                failed: clock::from_millis(failed_ms),
                start_timeout: clock::from_millis(start_timeout_ms),
                expected_workers,
                crash_loop_intensity,
                crash_loop_period: clock::from_millis(crash_loop_period_ms),
            };
            let events = &mut handle.events;
            let generation = handle
                .registry
                .register_generation(&config, |e| events.push(e.encode()))?;
            if !id.is_null() {
                // SAFETY: guaranteed by the caller.
                *id = generation;
            }
            Ok(())
        })
    }
}

/// The master closed the configuration of `generation` (nginx: the end of the Lua
/// VM that registered it): aborts it if it was never committed (`failed`), or else
/// commits the newer configuration of this master that replaces it.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_configuration_closed(
    h: *mut wm_handle,
    generation: u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let events = &mut handle.events;
            handle
                .registry
                .configuration_closed(generation, |e| events.push(e.encode()))?;
            Ok(())
        })
    }
}

/// Registers this process as worker `index` of `generation`, through this handle.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_register_worker(
    h: *mut wm_handle,
    generation: u64,
    index: u32,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            if handle.worker.is_some() {
                return Err(Failure(
                    WM_ERR_WORKER,
                    "this handle already has a registered worker".into(),
                ));
            }
            let events = &mut handle.events;
            let worker = handle
                .registry
                .register_worker(generation, index, |e| events.push(e.encode()))?;
            handle.worker = Some(worker);
            Ok(())
        })
    }
}

/// Records a heartbeat of the handle's worker: no lock, no system call.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_heartbeat(
    h: *mut wm_handle,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let worker = handle.worker.as_ref().ok_or_else(no_worker)?;
            handle.registry.heartbeat(worker)?;
            Ok(())
        })
    }
}

/// Whether the handle's worker leads the node: `*leads` receives 1 or 0 (0 in a
/// process with no worker), and `*term` the term, both from one atomic load: no
/// lock, no system call.
///
/// # Safety
///
/// `h` is NULL or an open handle; `leads` and `term` are valid for a write;
/// `errbuf` is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for
/// reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_is_leader(
    h: *mut wm_handle,
    leads: *mut c_int,
    term: *mut u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let word = handle.registry.leader_word();
            let mine = handle
                .worker
                .as_ref()
                .is_some_and(|w| word.is(w.slot_index()));
            // SAFETY: guaranteed by the caller.
            *leads = c_int::from(mine);
            // SAFETY: guaranteed by the caller.
            *term = word.term();
            Ok(())
        })
    }
}

/// The leader word (`worker_manager::leader::LeaderWord`): `*word` changes at every
/// change of leadership, so a worker compares it with the last one it saw. One
/// atomic load.
///
/// # Safety
///
/// `h` is NULL or an open handle; `word` is valid for a write; `errbuf` is NULL, or
/// valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_leader_word(
    h: *mut wm_handle,
    word: *mut u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            // SAFETY: guaranteed by the caller.
            *word = handle.registry.leader_word().0;
            Ok(())
        })
    }
}

/// The node's leader and term, read without the lock.
///
/// # Safety
///
/// `h` is NULL or an open handle; `out` is valid for a write; `errbuf` is NULL, or
/// valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_leader(
    h: *mut wm_handle,
    out: *mut wm_leader,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let (leader, word) = handle.registry.leader();
            let mine = handle
                .worker
                .as_ref()
                .is_some_and(|w| word.is(w.slot_index()));
            let counts = match &handle.worker {
                Some(w) => Some(handle.registry.status()?.counts(w.id().generation)),
                None => None,
            };
            let count = |c: Option<u32>| c.map_or(-1, |n| n.min(i32::MAX as u32) as i32);
            // SAFETY: guaranteed by the caller.
            *out = wm_leader {
                term: word.term(),
                cause: word.cause().map_or(0, |c| c.code()),
                pid: leader.map_or(0, |w| w.pid),
                generation: leader.map_or(0, |w| w.generation),
                index: leader.map_or(-1, |w| w.index as i32),
                mine: c_int::from(mine),
                n_prev: count(counts.and_then(|c| c.prev)),
                n_mine: count(counts.map(|c| c.mine)),
                n_next: count(counts.and_then(|c| c.next)),
            };
            Ok(())
        })
    }
}

/// The handle's worker began its graceful exit while its process goes on (nginx:
/// its pending timers run early): it is no longer elected, and if it leads, the
/// leadership moves now (`Registry::resign`).
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_resign(
    h: *mut wm_handle,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            worker_operation(handle, |registry, worker, on_event| {
                registry.resign(worker, on_event)
            })
        })
    }
}

/// The handle's worker began a graceful shutdown, and its process goes on for a
/// while (`Registry::announce_exit`).
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_announce_exit(
    h: *mut wm_handle,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            worker_operation(handle, |registry, worker, on_event| {
                registry.announce_exit(worker, on_event)
            })
        })
    }
}

/// The handle's worker exits: `graceful` non-zero for a graceful shutdown, zero for
/// a fast stop.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_exit_worker(
    h: *mut wm_handle,
    graceful: c_int,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let worker = handle.worker.take().ok_or_else(no_worker)?;
            let events = &mut handle.events;
            handle
                .registry
                .exit_worker(worker, graceful != 0, |e| events.push(e.encode()))?;
            Ok(())
        })
    }
}

/// Looks for dead workers, hangs, deserted and stalled generations.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_sweep(
    h: *mut wm_handle,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let events = &mut handle.events;
            handle.registry.sweep(|e| events.push(e.encode()))?;
            Ok(())
        })
    }
}

/// The number of events in the handle's buffer (0 for NULL).
///
/// # Safety
///
/// `h` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn wm_events_count(h: *const wm_handle) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe { h.as_ref() }.map_or(0, |handle| handle.events.len() as u32)
}

/// Copies event `i` of the handle's buffer into `*out`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `out` is valid for a write; `errbuf` is NULL, or
/// valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_event_get(
    h: *mut wm_handle,
    i: u32,
    out: *mut Encoded,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let event = handle
                .events
                .get(i as usize)
                .ok_or_else(|| Failure(WM_ERR_RANGE, format!("no event {i}")))?;
            // SAFETY: guaranteed by the caller.
            *out = *event;
            Ok(())
        })
    }
}

/// Records that the callbacks of event `seq` have run (the handle holds the lock,
/// by `wm_lock` or `wm_try_lock`), so that it is not delivered again should this
/// process die before `wm_unlock`. Events of node-level kinds whose callbacks never
/// ran because their process died are delivered again to the next locker, flagged
/// `WM_EVENT_REDELIVERED`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `errbuf` is NULL, or valid for `*errbuf_len`
/// bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_event_done(
    h: *mut wm_handle,
    seq: u64,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            if handle.holds == 0 {
                return Err(Failure(
                    WM_ERR_NOT_LOCKED,
                    "an event is done only under the lock".into(),
                ));
            }
            handle.registry.delivered(seq);
            Ok(())
        })
    }
}

/// Empties the handle's event buffer.
///
/// # Safety
///
/// `h` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn wm_events_clear(h: *mut wm_handle) {
    // SAFETY: guaranteed by the caller.
    if let Some(handle) = unsafe { h.as_mut() } {
        handle.events.clear();
    }
}

/// Takes a snapshot of the registry without waiting for the lock: read lock-free
/// (as `wm_metrics` and the CLI read it) unless this process holds the lock (inside
/// a callback), then under it. `*out` receives the registry as a whole; the entries
/// are read with `wm_snapshot_generation` and `wm_snapshot_worker`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `out` is valid for a write; `errbuf` is NULL, or
/// valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_snapshot(
    h: *mut wm_handle,
    out: *mut wm_status,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let snapshot = handle.registry.status()?;
            let verdict = snapshot.verdict;
            // SAFETY: guaranteed by the caller.
            *out = wm_status {
                generations: snapshot.generations.len() as u32,
                workers: snapshot.workers.len() as u32,
                run_state: snapshot.run_state.map_or(u32::MAX, |r| r.code()),
                consistent: c_int::from(snapshot.consistent),
                next_seq: snapshot.next_seq,
                verdict_generation: verdict.map_or(0, |v| v.generation),
                verdict: verdict.map_or(0, |v| {
                    if v.committed {
                        WM_VERDICT_COMMITTED
                    } else {
                        WM_VERDICT_FAILED
                    }
                }),
                verdict_ns: verdict.map_or(0, |v| clock::unix_nanos(v.time)),
                last_success_ns: snapshot.last_success.map_or(0, clock::unix_nanos),
                reload_verdicts: snapshot.reload_verdicts,
                reload_failures: snapshot.reload_failures,
                crash_loops: snapshot.crash_loops.len() as u32,
            };
            handle.snapshot = Some(snapshot);
            Ok(())
        })
    }
}

/// Renders the registry in the Prometheus text exposition format, read without the
/// lock (a scrape never waits behind a callback). `*text` points to `*len` bytes
/// (not NUL-terminated) owned by the handle, valid until its next `wm_metrics` or
/// `wm_close`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `text` and `len` are valid for writes; `errbuf`
/// is NULL, or valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and
/// writes.
#[no_mangle]
pub unsafe extern "C" fn wm_metrics(
    h: *mut wm_handle,
    text: *mut *const c_char,
    len: *mut usize,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, ErrBuf::new(errbuf, errbuf_len), |handle| {
            let registry = &handle.registry;
            handle.metrics = exposition::prometheus(&registry.observe(), registry.path());
            // SAFETY: guaranteed by the caller.
            *text = handle.metrics.as_ptr().cast();
            *len = handle.metrics.len();
            Ok(())
        })
    }
}

/// Copies entry `i` of the handle's last snapshot, as `pick` finds and converts it,
/// to `*out`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `out` is valid for a write; `err` as the
/// caller's own contract says.
unsafe fn copy_entry<T>(
    h: *mut wm_handle,
    what: &str,
    i: u32,
    out: *mut T,
    err: ErrBuf,
    pick: impl FnOnce(&Snapshot, usize) -> Option<T>,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        with_handle(h, err, |handle| {
            let entry = handle
                .snapshot
                .as_ref()
                .and_then(|s| pick(s, i as usize))
                .ok_or_else(|| Failure(WM_ERR_RANGE, format!("no {what} {i} in the snapshot")))?;
            // SAFETY: guaranteed by the caller.
            *out = entry;
            Ok(())
        })
    }
}

/// Copies generation `i` of the handle's last snapshot into `*out`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `out` is valid for a write; `errbuf` is NULL, or
/// valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_snapshot_generation(
    h: *mut wm_handle,
    i: u32,
    out: *mut wm_generation,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    let code = |c: Option<u32>| c.unwrap_or(0);
    let err = ErrBuf::new(errbuf, errbuf_len);
    // SAFETY: guaranteed by the caller.
    unsafe {
        copy_entry(h, "generation", i, out, err, |s, i| {
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
                registered_ns: clock::unix_nanos(g.registered),
                committed_ns: g.committed.map_or(0, clock::unix_nanos),
            })
        })
    }
}

/// Copies crash loop `i` of the handle's last snapshot into `*out`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `out` is valid for a write; `errbuf` is NULL, or
/// valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_snapshot_crash_loop(
    h: *mut wm_handle,
    i: u32,
    out: *mut wm_crash_loop,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    let err = ErrBuf::new(errbuf, errbuf_len);
    // SAFETY: guaranteed by the caller.
    unsafe {
        copy_entry(h, "crash loop", i, out, err, |s, i| {
            s.crash_loops.get(i).map(|l| wm_crash_loop {
                index: l.index,
                last_pid: l.last_crashed.pid,
                last_generation: l.last_crashed.generation,
                recent_crashes: l.recent_crashes,
                since_ns: clock::unix_nanos(l.since),
            })
        })
    }
}

/// Copies worker `i` of the handle's last snapshot into `*out`.
///
/// # Safety
///
/// `h` is NULL or an open handle; `out` is valid for a write; `errbuf` is NULL, or
/// valid for `*errbuf_len` bytes with `errbuf_len` valid for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn wm_snapshot_worker(
    h: *mut wm_handle,
    i: u32,
    out: *mut wm_worker,
    errbuf: *mut c_char,
    errbuf_len: *mut usize,
) -> c_int {
    let err = ErrBuf::new(errbuf, errbuf_len);
    // SAFETY: guaranteed by the caller.
    unsafe {
        copy_entry(h, "worker", i, out, err, |s, i| {
            s.workers.get(i).map(|w| wm_worker {
                generation: w.id.generation,
                pid: w.id.pid,
                index: w.id.index,
                state: w.state.code(),
                hung: w.hung as u32,
                replaces_pid: w.replaces_pid.unwrap_or(0),
                respawns: w.respawns,
                heartbeat_age_ms: clock::millis(w.heartbeat_age),
                registered_ns: clock::unix_nanos(w.registered),
            })
        })
    }
}
