#![no_main]
//! Sequences of C ABI calls, in any order, with arbitrary arguments: every status
//! code must be one of the documented ones (never `WM_ERR_PANIC`), the message
//! must be written into the caller's buffer as the contract says (cut to its
//! capacity, NUL-terminated, never past it, nothing on success), and the per-process state (the open
//! registry, the lock holdings, the worker, the event buffer, the last snapshot and
//! metrics text) must behave as the header says.
//!
//! Pointers are NULL only where the header allows it (`errbuf`; and `path`, which
//! `wm_open` checks and its tests pass on purpose); every other one is valid, as the
//! contract requires. Paths are names inside the scratch directory or a few fixed
//! bad ones, so the library never creates a file anywhere else.
//!
//! The library keeps its state per process and has no way to close a registry: a
//! handle is leaked on purpose (its mapping must outlive the workers). So the state
//! carries over from one input to the next, which is sound and which this target
//! mirrors in `Model`. Each input ends by letting its worker exit, releasing its
//! lock holdings and clearing the event buffer; the handles opened per process are
//! capped (`OPENS`), and `scripts/fuzz.sh` runs this target in fork mode, so that
//! processes, and their handles, are renewed.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use worker_manager::{Capacities, EventKind, GenerationConfig, Options, Registry, WorkerState};
use worker_manager_ffi::*;
use worker_manager_fuzz::{holder_dies, impatient, scratch_dir, worker_dies};

/// Registry handles a process may open: each one stays mapped for good, and costs
/// up to 64 KiB of resident pages once used (libFuzzer stops at 2 GiB).
const OPENS: u32 = 2048;
const MAX_CALLS: usize = 64;
/// The highest status code of the header.
const LAST_STATUS: c_int = WM_ERR_REPLACED;
/// Longer than any file name (`NAME_MAX`), so such names fail with ENAMETOOLONG.
const MAX_NAME: usize = 4096;

struct Fixture {
    /// Registries to open: new ones, and prepared ones with other capacities, with
    /// dead workers, with a dead lock holder.
    registries: Vec<PathBuf>,
    bad: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = scratch_dir();
        let quiet = |_: &worker_manager::Event| {};
        let mut registries: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("r{i}.wm"))).collect();

        let small = dir.join("small.wm");
        let options = Options {
            capacities: Capacities {
                generations: 2,
                workers: 1,
                events: 3,
            },
            ..impatient()
        };
        drop(Registry::open(&small, &options).unwrap());
        registries.push(small);

        // Workers 0 to 3 of generation 1 died: three tombstones and one death that
        // no sweep has seen yet. A new worker of another index takes slot 4.
        let tombstones = dir.join("tombstones.wm");
        let registry = Registry::open(&tombstones, &impatient()).unwrap();
        let generation = registry
            .register_generation(&GenerationConfig::default(), quiet)
            .unwrap();
        drop(registry);
        for index in 0..4 {
            worker_dies(&tombstones, generation, index);
        }
        registries.push(tombstones);

        let dead_holder = dir.join("dead-holder.wm");
        drop(Registry::open(&dead_holder, &impatient()).unwrap());
        holder_dies(&dead_holder);
        registries.push(dead_holder);

        let file = |name: &str, content: &[u8], mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let directory = dir.join("directory");
        std::fs::create_dir(&directory).unwrap();
        let symlink = dir.join("symlink");
        std::os::unix::fs::symlink(&registries[0], &symlink).unwrap();
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink("/nonexistent/wm-fuzz.wm", &dangling).unwrap();
        let fifo = CString::new(dir.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let bad_paths = [
            directory,
            symlink,
            dangling,
            file("foreign", &[b'x'; 8192], 0o600),
            file("truncated", &[0; 100], 0o600),
            file("world-writable", &[], 0o666),
            PathBuf::from(OsStr::from_bytes(fifo.as_bytes())),
            PathBuf::from("/dev/null"),
            PathBuf::from("/"),
            PathBuf::from("/nonexistent/wm-fuzz.wm"),
            PathBuf::from(""),
        ];
        let mut bad: Vec<Vec<u8>> = bad_paths
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();
        let mut long = dir.join("").as_os_str().as_bytes().to_vec();
        long.resize(long.len() + MAX_NAME, b'n');
        bad.push(long);
        bad.push([dir.as_os_str().as_bytes(), b"/\xff\xfe.wm"].concat());
        Fixture { registries, bad }
    })
}

/// What the library's per-process state should be, as far as the calls tell.
struct Model {
    /// The path of the open registry.
    open: Option<PathBuf>,
    opens_left: u32,
    holds: u32,
    worker: bool,
    /// Generations and workers of the last successful snapshot.
    snapshot: Option<(u32, u32)>,
    /// The last metrics text as returned, and a copy of it.
    metrics: Option<(*const c_char, usize, Vec<u8>)>,
    /// The generation registered last.
    generation: u64,
    /// The generation read last from a snapshot.
    seen: u64,
}

thread_local! {
    static MODEL: RefCell<Model> = const {
        RefCell::new(Model {
            open: None,
            opens_left: OPENS,
            holds: 0,
            worker: false,
            snapshot: None,
            metrics: None,
            generation: 0,
            seen: 0,
        })
    };
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ErrArg {
    Null,
    Valid,
    /// A buffer of this capacity (0 to 255 bytes).
    Capacity(u8),
}

#[derive(Arbitrary, Debug)]
enum PathArg {
    Null,
    Registry(u8),
    /// The same file as `Registry` by another path, so another handle.
    Respelled(u8),
    Bad(u8),
    /// A name in the scratch directory: any bytes up to the first NUL, as C sees
    /// them, with `/` replaced so that it stays a name.
    Name(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Index {
    Nth(u8),
    /// Just past the end.
    Count,
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum GenerationArg {
    Registered,
    /// The last one read from a snapshot.
    Seen,
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Call {
    AbiVersion,
    Open {
        path: PathArg,
        lock_timeout_ms: u64,
        err: ErrArg,
    },
    Lock(ErrArg),
    TryLock(ErrArg),
    Unlock(ErrArg),
    RegisterGeneration {
        interval_ms: u64,
        failed_ms: u64,
        start_timeout_ms: u64,
        expected_workers: u32,
        err: ErrArg,
    },
    RegisterWorker {
        generation: GenerationArg,
        index: u32,
        err: ErrArg,
    },
    Heartbeat(ErrArg),
    AnnounceExit(ErrArg),
    ExitWorker {
        graceful: c_int,
        err: ErrArg,
    },
    Sweep(ErrArg),
    EventsCount,
    EventGet(Index, ErrArg),
    /// `wm_event_done` of event `Index` of the buffer (a raw number past its end).
    EventDone(Index, ErrArg),
    EventsClear,
    Snapshot(ErrArg),
    SnapshotGeneration(Index, ErrArg),
    SnapshotWorker(Index, ErrArg),
    Metrics(ErrArg),
    /// Reads the last metrics text again: it must be intact until the next
    /// `wm_metrics`.
    MetricsAgain,
}

/// Bytes of the error buffer; those past the capacity given must stay untouched.
const ERRBUF: usize = 512;
const UNTOUCHED: c_char = 0x55;

/// The caller's error buffer and what the library left in it.
struct ErrSlot {
    kind: ErrArg,
    buf: [c_char; ERRBUF],
    len: usize,
}

impl ErrSlot {
    fn new(kind: ErrArg) -> ErrSlot {
        ErrSlot {
            kind,
            buf: [UNTOUCHED; ERRBUF],
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        match self.kind {
            ErrArg::Null => 0,
            ErrArg::Valid => ERRBUF,
            ErrArg::Capacity(n) => n.into(),
        }
    }

    /// The buffer and its capacity, as a call's last two arguments.
    fn args(&mut self) -> (*mut c_char, *mut usize) {
        self.len = self.capacity();
        match self.kind {
            ErrArg::Null => (ptr::null_mut(), ptr::null_mut()),
            _ => (self.buf.as_mut_ptr(), &mut self.len),
        }
    }
}

/// Checks a status code and, when the caller gave a buffer, the message.
fn check(call: &Call, code: c_int, err: &ErrSlot) {
    assert!(
        (WM_OK..=LAST_STATUS).contains(&code),
        "{call:?}: unknown status {code}"
    );
    assert_ne!(code, WM_ERR_PANIC, "{call:?}: the library panicked");
    let capacity = err.capacity();
    assert!(
        err.buf[capacity..].iter().all(|&b| b == UNTOUCHED),
        "{call:?}: written past the capacity {capacity}"
    );
    if code == WM_OK || capacity == 0 {
        assert!(
            err.buf.iter().all(|&b| b == UNTOUCHED),
            "{call:?}: a message on success, or in no room"
        );
        assert_eq!(err.len, capacity, "{call:?}: the length changed");
        return;
    }
    assert!(
        err.len < capacity,
        "{call:?}: length {} of {capacity}",
        err.len
    );
    assert_eq!(
        err.buf[err.len], 0,
        "{call:?}: the message is not NUL-terminated"
    );
    // SAFETY: just checked: a NUL at `len`, within the buffer.
    let message = unsafe { CStr::from_ptr(err.buf.as_ptr()) };
    assert_eq!(message.to_bytes().len(), err.len);
    assert!(message.to_str().is_ok(), "{call:?}: cut inside a character");
    if capacity == ERRBUF {
        assert!(
            !message.to_bytes().is_empty(),
            "{call:?}: status {code} without a message"
        );
    }
}

fn index(i: &Index, count: u32) -> u32 {
    match *i {
        Index::Nth(n) => n.into(),
        Index::Count => count,
        Index::Raw(n) => n,
    }
}

fn path_bytes(arg: &PathArg) -> Option<Vec<u8>> {
    let fixture = fixture();
    let pick = |n: u8| &fixture.registries[n as usize % fixture.registries.len()];
    match arg {
        PathArg::Null => None,
        PathArg::Registry(n) => Some(pick(*n).as_os_str().as_bytes().to_vec()),
        PathArg::Respelled(n) => {
            let path = pick(*n);
            let name = path.file_name().unwrap();
            let respelled = path.parent().unwrap().join("directory/..").join(name);
            Some(respelled.as_os_str().as_bytes().to_vec())
        }
        PathArg::Bad(n) => Some(fixture.bad[*n as usize % fixture.bad.len()].clone()),
        PathArg::Name(bytes) => {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            let name = bytes[..end.min(MAX_NAME)]
                .iter()
                .map(|&b| if b == b'/' { b'_' } else { b });
            // The prefix keeps it from being "." or "..".
            let dir = scratch_dir().as_os_str().as_bytes();
            Some(dir.iter().copied().chain(*b"/n-").chain(name).collect())
        }
    }
}

/// Whether opening `arg` may map a registry that then stays mapped.
fn may_map(arg: &PathArg) -> bool {
    matches!(
        arg,
        PathArg::Registry(_) | PathArg::Respelled(_) | PathArg::Name(_)
    )
}

fn open(model: &mut Model, call: &Call, path: &PathArg, lock_timeout_ms: u64, err: ErrArg) {
    let bytes = path_bytes(path);
    // The library compares paths as `Path`s do, component by component.
    let as_path = bytes
        .as_deref()
        .map(|b| Path::new(OsStr::from_bytes(b)).to_path_buf());
    let same = as_path.is_some() && as_path == model.open;
    if !same && may_map(path) && model.opens_left == 0 {
        return;
    }
    let c_path = bytes.as_ref().map(|b| CString::new(b.clone()).unwrap());
    let mut e = ErrSlot::new(err);
    let (ebuf, elen) = e.args();
    let raw = c_path.as_ref().map_or(ptr::null(), |p| p.as_ptr());
    // SAFETY: `raw` is NULL or a NUL-terminated string; `ebuf`, `elen` NULL or valid.
    let code = unsafe { wm_open(raw, lock_timeout_ms, ebuf, elen) };
    check(call, code, &e);
    if same {
        assert_eq!(code, WM_OK, "reopening the open path is a no-op");
    } else if code == WM_OK {
        assert!(may_map(path), "{call:?} opened a bad path");
        model.opens_left -= 1;
        model.open = as_path;
    }
}

fn run(model: &mut Model, call: &Call) {
    let is_open = model.open.is_some();
    let mut e;
    let code = match *call {
        Call::AbiVersion => {
            assert_eq!(wm_abi_version(), WM_ABI_VERSION);
            return;
        }
        Call::Open {
            ref path,
            lock_timeout_ms,
            err,
        } => return open(model, call, path, lock_timeout_ms, err),
        Call::Lock(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_lock(ebuf, elen) };
            if code == WM_OK {
                model.holds += 1;
            }
            code
        }
        Call::TryLock(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut acquired: c_int = -1;
            // SAFETY: `acquired` is valid; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_try_lock(&mut acquired, ebuf, elen) };
            if code == WM_OK {
                assert!(acquired == 0 || acquired == 1, "acquired = {acquired}");
                model.holds += acquired as u32;
            }
            code
        }
        Call::Unlock(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_unlock(ebuf, elen) };
            if model.holds == 0 {
                assert_eq!(code, WM_ERR_NOT_LOCKED);
            } else {
                assert_eq!(code, WM_OK);
                model.holds -= 1;
            }
            code
        }
        Call::RegisterGeneration {
            interval_ms,
            failed_ms,
            start_timeout_ms,
            expected_workers,
            err,
        } => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut id = 0u64;
            // SAFETY: `id` is valid; `ebuf`, `elen` are NULL or valid.
            let code = unsafe {
                wm_register_generation(
                    interval_ms,
                    failed_ms,
                    start_timeout_ms,
                    expected_workers,
                    &mut id,
                    ebuf,
                    elen,
                )
            };
            if code == WM_OK {
                assert_ne!(id, 0);
                model.generation = id;
            }
            code
        }
        Call::RegisterWorker {
            ref generation,
            index,
            err,
        } => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let generation = match *generation {
                GenerationArg::Registered => model.generation,
                GenerationArg::Seen => model.seen,
                GenerationArg::Raw(id) => id,
            };
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_register_worker(generation, index, ebuf, elen) };
            if model.worker {
                assert_eq!(code, WM_ERR_WORKER);
            } else if code == WM_OK {
                model.worker = true;
            }
            code
        }
        Call::Heartbeat(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_heartbeat(ebuf, elen) };
            if is_open && !model.worker {
                assert_eq!(code, WM_ERR_WORKER);
            }
            code
        }
        Call::AnnounceExit(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_announce_exit(ebuf, elen) };
            if is_open && !model.worker {
                assert_eq!(code, WM_ERR_WORKER);
            }
            code
        }
        Call::ExitWorker { graceful, err } => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_exit_worker(graceful, ebuf, elen) };
            if is_open {
                if !model.worker {
                    assert_eq!(code, WM_ERR_WORKER);
                }
                // The handle is consumed whatever the outcome.
                model.worker = false;
            }
            code
        }
        Call::Sweep(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            unsafe { wm_sweep(ebuf, elen) }
        }
        Call::EventsCount => {
            let _ = wm_events_count();
            return;
        }
        Call::EventGet(ref i, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let count = wm_events_count();
            let i = index(i, count);
            let mut event = wm_event::default();
            // SAFETY: `event` is valid for a write; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_event_get(i, &mut event, ebuf, elen) };
            assert_eq!(code == WM_OK, i < count, "event {i} of {count}: {code}");
            if code == WM_OK {
                assert_ne!(event.seq, 0);
                assert!(EventKind::from_code(event.kind).is_some());
            }
            code
        }
        Call::EventDone(ref i, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let count = wm_events_count();
            let mut event = wm_event::default();
            let seq = match *i {
                Index::Raw(n) => u64::from(n),
                ref i => {
                    let i = index(i, count);
                    // SAFETY: `event` is valid for a write; no error buffer.
                    unsafe { wm_event_get(i, &mut event, ptr::null_mut(), ptr::null_mut()) };
                    event.seq
                }
            };
            // SAFETY: `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_event_done(seq, ebuf, elen) };
            if is_open {
                assert_eq!(
                    code == WM_OK,
                    model.holds > 0,
                    "done without the lock: {code}"
                );
            }
            code
        }
        Call::EventsClear => {
            wm_events_clear();
            assert_eq!(wm_events_count(), 0);
            return;
        }
        Call::Snapshot(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let (mut generations, mut workers, mut run_state, mut next_seq) = (0, 0, 0, 0);
            let mut consistent: c_int = -1;
            // SAFETY: the out pointers are valid; `ebuf`, `elen` are NULL or valid.
            let code = unsafe {
                wm_snapshot(
                    &mut generations,
                    &mut workers,
                    &mut run_state,
                    &mut next_seq,
                    &mut consistent,
                    ebuf,
                    elen,
                )
            };
            if code == WM_OK {
                assert!(generations <= 65536 && workers <= 65536);
                assert!(next_seq >= 1);
                assert!(consistent == 0 || consistent == 1);
                model.snapshot = Some((generations, workers));
            }
            code
        }
        Call::SnapshotGeneration(ref i, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let count = model.snapshot.map_or(0, |s| s.0);
            let i = index(i, count);
            let mut out = wm_generation::default();
            // SAFETY: `out` is valid for a write; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_snapshot_generation(i, &mut out, ebuf, elen) };
            assert_eq!(
                code == WM_OK,
                i < count,
                "generation {i} of {count}: {code}"
            );
            if code == WM_OK {
                assert_ne!(out.id, 0);
                model.seen = out.id;
            }
            code
        }
        Call::SnapshotWorker(ref i, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let count = model.snapshot.map_or(0, |s| s.1);
            let i = index(i, count);
            let mut out = wm_worker::default();
            // SAFETY: `out` is valid for a write; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_snapshot_worker(i, &mut out, ebuf, elen) };
            assert_eq!(code == WM_OK, i < count, "worker {i} of {count}: {code}");
            if code == WM_OK {
                let state = WorkerState::ALL.iter().find(|s| s.code() == out.state);
                assert!(state.is_some_and(|&s| s != WorkerState::Free));
            }
            code
        }
        Call::Metrics(err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut text: *const c_char = ptr::null();
            let mut len = 0usize;
            // SAFETY: `text` and `len` are valid; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_metrics(&mut text, &mut len, ebuf, elen) };
            model.metrics = None;
            if code == WM_OK {
                assert!(!text.is_null());
                // SAFETY: the library returned `len` bytes at `text`, valid until the
                // next `wm_metrics` on this thread.
                let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
                let body = std::str::from_utf8(bytes).expect("metrics are UTF-8");
                assert!(body.starts_with("# HELP worker_manager_"));
                model.metrics = Some((text, len, bytes.to_vec()));
            }
            code
        }
        Call::MetricsAgain => {
            if let Some((text, len, ref copy)) = model.metrics {
                // SAFETY: no `wm_metrics` ran since it returned this text.
                let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
                assert_eq!(
                    bytes,
                    &copy[..],
                    "the metrics text changed under the caller"
                );
            }
            return;
        }
    };
    check(call, code, &e);
    let needs_registry = !matches!(
        call,
        Call::Unlock(_)
            | Call::EventGet(..)
            | Call::EventDone(..)
            | Call::SnapshotGeneration(..)
            | Call::SnapshotWorker(..)
    );
    let worker_first = matches!(call, Call::RegisterWorker { .. }) && model.worker;
    if !is_open && needs_registry && !worker_first {
        assert_eq!(code, WM_ERR_NOT_OPEN, "{call:?} without a registry");
    }
}

/// Releases what an input holds, so that the next one starts without a worker,
/// unlocked and with an empty event buffer: a finding then depends on one input
/// and the registry files, not on the inputs before.
fn settle(model: &mut Model) {
    let mut err = ErrSlot::new(ErrArg::Valid);
    if model.worker {
        let call = Call::ExitWorker {
            graceful: 1,
            err: ErrArg::Valid,
        };
        run(model, &call);
    }
    while model.holds > 0 {
        let (buf, len) = err.args();
        // SAFETY: a valid error buffer.
        assert_eq!(unsafe { wm_unlock(buf, len) }, WM_OK);
        model.holds -= 1;
    }
    let (buf, len) = err.args();
    // SAFETY: as above.
    assert_eq!(unsafe { wm_unlock(buf, len) }, WM_ERR_NOT_LOCKED);
    wm_events_clear();
}

fuzz_target!(|calls: Vec<Call>| {
    fixture();
    MODEL.with(|model| {
        let mut model = model.borrow_mut();
        for call in calls.iter().take(MAX_CALLS) {
            run(&mut model, call);
        }
        settle(&mut model);
    });
});
