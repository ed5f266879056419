#![no_main]
//! Sequences of C ABI calls, in any order, with arbitrary arguments, over several
//! handles: every status code must be one of the documented ones (never
//! `WM_ERR_PANIC`), the message must be written into the caller's buffer as the
//! contract says (cut to its capacity, NUL-terminated, never past it, nothing on
//! success), and each handle's state (its lock holdings, its worker, its event
//! buffer, its last snapshot and metrics text) must behave as the header says.
//!
//! Pointers are NULL only where the header allows it (`errbuf`, a handle, `path`
//! and `subsystem`, which `wm_open` and `wm_default_path` check); every other one is
//! valid, as the contract requires. Paths are names inside the scratch directory or a
//! few fixed bad ones, so the library never creates a file anywhere else.
//!
//! Each input ends by letting every worker exit, releasing the lock holdings and
//! closing every handle, so that a finding depends on one input and the registry
//! files. A handle closed with its worker still registered keeps its mapping for
//! the life of the process (the kernel's record of the worker's mutex points into
//! it): those are capped (`KEPT`), and `scripts/fuzz.sh` runs this target in fork
//! mode, so that processes are renewed.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use worker_manager::{
    naming, Capacities, EventKind, GenerationConfig, Options, Registry, WorkerState,
};
use worker_manager_ffi::*;
use worker_manager_fuzz::{holder_dies, impatient, scratch_dir, worker_dies};

/// Mappings a process may keep for good (a handle closed with its worker still
/// registered): each costs up to 64 KiB of resident pages once used (libFuzzer stops
/// at 2 GiB).
const KEPT: u32 = 2048;
/// Handles open at once.
const MAX_HANDLES: usize = 6;
const MAX_CALLS: usize = 64;
/// The highest status code of the header.
const LAST_STATUS: c_int = WM_ERR_SHARED;
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

/// What one handle should hold, as far as the calls tell.
struct Handle {
    ptr: *mut wm_handle,
    /// The path it was opened with, and for which subsystem.
    path: PathBuf,
    subsystem: Vec<u8>,
    holds: u32,
    worker: bool,
    /// Generations and workers of its last successful snapshot.
    snapshot: Option<(u32, u32)>,
    /// Its last metrics text as returned, and a copy of it.
    metrics: Option<(*const c_char, usize, Vec<u8>)>,
}

struct Model {
    handles: Vec<Handle>,
    kept_left: u32,
    /// The generation registered last.
    generation: u64,
    /// The generation read last from a snapshot.
    seen: u64,
}

thread_local! {
    static MODEL: RefCell<Model> = const {
        RefCell::new(Model {
            handles: Vec::new(),
            kept_left: KEPT,
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

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HandleArg {
    Null,
    /// One of the open handles (none open: NULL).
    Nth(u8),
}

#[derive(Arbitrary, Debug)]
enum SubsystemArg {
    Null,
    Http,
    Stream,
    /// Any bytes up to the first NUL.
    Raw(Vec<u8>),
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
    /// `wm_name` of any set and entry.
    Name {
        names: u8,
        i: u8,
    },
    /// `wm_default_path` of any name and subsystem, into a buffer of any capacity.
    DefaultPath {
        shm: Vec<u8>,
        subsystem: SubsystemArg,
        capacity: u16,
        err: ErrArg,
    },
    Open {
        path: PathArg,
        subsystem: SubsystemArg,
        lock_timeout_ms: u64,
        err: ErrArg,
    },
    Close(HandleArg),
    Lock(HandleArg, ErrArg),
    TryLock(HandleArg, ErrArg),
    Unlock(HandleArg, ErrArg),
    RegisterGeneration {
        h: HandleArg,
        interval_ms: u64,
        failed_ms: u64,
        start_timeout_ms: u64,
        expected_workers: u32,
        crash_loop_intensity: u32,
        crash_loop_period_ms: u64,
        err: ErrArg,
    },
    ConfigurationClosed(HandleArg, GenerationArg, ErrArg),
    RegisterWorker {
        h: HandleArg,
        generation: GenerationArg,
        index: u32,
        err: ErrArg,
    },
    Heartbeat(HandleArg, ErrArg),
    IsLeader(HandleArg, ErrArg),
    LeaderWord(HandleArg, ErrArg),
    Leader(HandleArg, ErrArg),
    Resign(HandleArg, ErrArg),
    AnnounceExit(HandleArg, ErrArg),
    ExitWorker {
        h: HandleArg,
        graceful: c_int,
        err: ErrArg,
    },
    Sweep(HandleArg, ErrArg),
    EventsCount(HandleArg),
    EventGet(HandleArg, Index, ErrArg),
    /// `wm_event_done` of event `Index` of the buffer (a raw number past its end).
    EventDone(HandleArg, Index, ErrArg),
    EventsClear(HandleArg),
    Snapshot(HandleArg, ErrArg),
    SnapshotGeneration(HandleArg, Index, ErrArg),
    SnapshotWorker(HandleArg, Index, ErrArg),
    SnapshotCrashLoop(HandleArg, Index, ErrArg),
    Metrics(HandleArg, ErrArg),
    /// Reads the handle's last metrics text again: it must be intact until its next
    /// `wm_metrics`.
    MetricsAgain(HandleArg),
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

fn subsystem_bytes(arg: &SubsystemArg) -> Option<Vec<u8>> {
    match arg {
        SubsystemArg::Null => None,
        SubsystemArg::Http => Some(b"http".to_vec()),
        SubsystemArg::Stream => Some(b"stream".to_vec()),
        SubsystemArg::Raw(bytes) => {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            Some(bytes[..end].to_vec())
        }
    }
}

fn open(
    model: &mut Model,
    call: &Call,
    path: &PathArg,
    subsystem: &SubsystemArg,
    ms: u64,
    err: ErrArg,
) {
    if model.handles.len() >= MAX_HANDLES {
        return;
    }
    let bytes = path_bytes(path);
    let sub = subsystem_bytes(subsystem);
    // The library compares paths as `Path`s do, component by component.
    let as_path = bytes
        .as_deref()
        .map(|b| Path::new(OsStr::from_bytes(b)).to_path_buf());
    let c_path = bytes.as_ref().map(|b| CString::new(b.clone()).unwrap());
    let c_sub = sub.as_ref().map(|b| CString::new(b.clone()).unwrap());
    let mut e = ErrSlot::new(err);
    let (ebuf, elen) = e.args();
    let mut handle: *mut wm_handle = ptr::null_mut();
    let raw = |c: &Option<CString>| c.as_ref().map_or(ptr::null(), |p| p.as_ptr());
    // SAFETY: NULL or NUL-terminated strings; `handle` is valid; `ebuf`, `elen`
    // are NULL or valid.
    let code = unsafe { wm_open(raw(&c_path), raw(&c_sub), ms, &mut handle, ebuf, elen) };
    if code != WM_ERR_REPLACED {
        check(call, code, &e);
    }
    let valid_sub = sub.as_ref().is_some_and(|s| std::str::from_utf8(s).is_ok());
    let other = model
        .handles
        .iter()
        .find(|h| Some(&h.path) == as_path.as_ref() && Some(&h.subsystem) != sub.as_ref());
    if other.is_some() && valid_sub && code != WM_ERR_INVALID_ARGUMENT {
        assert_eq!(
            code, WM_ERR_SHARED,
            "{call:?}: a registry of two subsystems"
        );
    }
    if code == WM_OK || code == WM_ERR_REPLACED {
        assert!(may_map(path), "{call:?} opened a bad path");
        assert!(!handle.is_null());
        model.handles.push(Handle {
            ptr: handle,
            path: as_path.unwrap(),
            subsystem: sub.unwrap(),
            holds: 0,
            worker: false,
            snapshot: None,
            metrics: None,
        });
    } else {
        assert!(handle.is_null(), "{call:?}: a handle on failure");
    }
}

/// The handle a call names: its position in the model, or `None` for NULL.
fn pick(model: &Model, h: HandleArg) -> Option<usize> {
    match h {
        HandleArg::Null => None,
        HandleArg::Nth(n) if !model.handles.is_empty() => Some(n as usize % model.handles.len()),
        HandleArg::Nth(_) => None,
    }
}

/// The code and name of entry `i` of `names`: any name is the library's, in lower
/// case, and there are fewer than 256 entries in a set.
fn name(names: u8, i: u8) {
    let (mut code, mut len) = (u32::MAX, usize::MAX);
    // SAFETY: valid out-parameters.
    let name = unsafe { wm_name(names.into(), i.into(), &mut code, &mut len) };
    if name.is_null() {
        return;
    }
    // SAFETY: the library returned `len` bytes of static text at `name`.
    let bytes = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) };
    assert!(
        !bytes.is_empty() && bytes.iter().all(|&b| b.is_ascii_lowercase() || b == b'_'),
        "names {names}, entry {i}: {bytes:?}"
    );
    assert!(code < 256, "names {names}, entry {i}: code {code}");
}

/// `wm_default_path` of `shm`: the core's path of a valid name, written whole or
/// not at all.
fn default_path(call: &Call, shm: &[u8], subsystem: &SubsystemArg, capacity: u16, err: ErrArg) {
    const PREFIX: &str = "/usr/local/openresty/nginx/";
    let prefix = CString::new(PREFIX).unwrap();
    let sub = subsystem_bytes(subsystem);
    let c_sub = sub.as_ref().map(|b| CString::new(b.clone()).unwrap());
    let mut path = vec![UNTOUCHED; capacity.into()];
    let mut len = path.len();
    let mut e = ErrSlot::new(err);
    let (ebuf, elen) = e.args();
    // SAFETY: a NUL-terminated prefix, `shm` of its length, a NULL or NUL-terminated
    // subsystem, `path` of `len` bytes; `ebuf`, `elen` are NULL or valid.
    let code = unsafe {
        wm_default_path(
            prefix.as_ptr(),
            shm.as_ptr().cast(),
            shm.len(),
            c_sub.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
            path.as_mut_ptr(),
            &mut len,
            ebuf,
            elen,
        )
    };
    check(call, code, &e);
    if code != WM_OK {
        assert!(
            path.iter().all(|&b| b == UNTOUCHED),
            "{call:?}: a path on failure"
        );
        return;
    }
    let name = std::str::from_utf8(shm).expect("a valid name is UTF-8");
    assert_eq!(naming::check_name(name), Ok(()));
    let sub = std::str::from_utf8(sub.as_deref().unwrap()).unwrap();
    let expected = naming::default_path(PREFIX, name, sub);
    let written: Vec<u8> = path[..len].iter().map(|&b| b as u8).collect();
    assert_eq!(written, expected.as_os_str().as_bytes());
    assert_eq!(path[len], 0, "{call:?}: the path is not NUL-terminated");
}

/// Closes handle `i`, as `wm_close` does: its holdings released, its mapping kept
/// for good if its worker is still registered.
fn close(model: &mut Model, i: usize) {
    let handle = model.handles.remove(i);
    if handle.worker {
        model.kept_left -= 1;
    }
    // SAFETY: an open handle, not used after.
    unsafe { wm_close(handle.ptr) };
}

fn run(model: &mut Model, call: &Call) {
    let handle_arg = match *call {
        Call::AbiVersion => {
            assert_eq!(wm_abi_version(), WM_ABI_VERSION);
            return;
        }
        Call::Name { names, i } => return name(names, i),
        Call::DefaultPath {
            ref shm,
            ref subsystem,
            capacity,
            err,
        } => return default_path(call, shm, subsystem, capacity, err),
        Call::Open {
            ref path,
            ref subsystem,
            lock_timeout_ms,
            err,
        } => return open(model, call, path, subsystem, lock_timeout_ms, err),
        Call::Close(h) => {
            match pick(model, h) {
                Some(i) if !model.handles[i].worker || model.kept_left > 0 => close(model, i),
                Some(_) => {}
                // SAFETY: NULL is ignored.
                None => unsafe { wm_close(ptr::null_mut()) },
            }
            return;
        }
        Call::Lock(h, _)
        | Call::TryLock(h, _)
        | Call::Unlock(h, _)
        | Call::RegisterGeneration { h, .. }
        | Call::ConfigurationClosed(h, ..)
        | Call::RegisterWorker { h, .. }
        | Call::Heartbeat(h, _)
        | Call::IsLeader(h, _)
        | Call::LeaderWord(h, _)
        | Call::Leader(h, _)
        | Call::Resign(h, _)
        | Call::AnnounceExit(h, _)
        | Call::ExitWorker { h, .. }
        | Call::Sweep(h, _)
        | Call::EventsCount(h)
        | Call::EventGet(h, ..)
        | Call::EventDone(h, ..)
        | Call::EventsClear(h)
        | Call::Snapshot(h, _)
        | Call::SnapshotGeneration(h, ..)
        | Call::SnapshotWorker(h, ..)
        | Call::SnapshotCrashLoop(h, ..)
        | Call::Metrics(h, _)
        | Call::MetricsAgain(h) => h,
    };
    let Some(i) = pick(model, handle_arg) else {
        return run_null(call);
    };
    let generation_of = |model: &Model, arg: &GenerationArg| match *arg {
        GenerationArg::Registered => model.generation,
        GenerationArg::Seen => model.seen,
        GenerationArg::Raw(id) => id,
    };
    let h = model.handles[i].ptr;
    let mut e;
    let code = match *call {
        Call::Lock(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_lock(h, ebuf, elen) };
            if code == WM_OK {
                model.handles[i].holds += 1;
            }
            code
        }
        Call::TryLock(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut acquired: c_int = -1;
            // SAFETY: an open handle; `acquired` is valid; `ebuf`, `elen` are NULL
            // or valid.
            let code = unsafe { wm_try_lock(h, &mut acquired, ebuf, elen) };
            if code == WM_OK {
                assert!(acquired == 0 || acquired == 1, "acquired = {acquired}");
                model.handles[i].holds += acquired as u32;
            }
            code
        }
        Call::Unlock(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_unlock(h, ebuf, elen) };
            let handle = &mut model.handles[i];
            if handle.holds == 0 {
                assert_eq!(code, WM_ERR_NOT_LOCKED);
            } else {
                assert_eq!(code, WM_OK);
                handle.holds -= 1;
            }
            code
        }
        Call::RegisterGeneration {
            interval_ms,
            failed_ms,
            start_timeout_ms,
            expected_workers,
            crash_loop_intensity,
            crash_loop_period_ms,
            err,
            ..
        } => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut id = 0u64;
            // SAFETY: an open handle; `id` is valid; `ebuf`, `elen` are NULL or
            // valid.
            let code = unsafe {
                wm_register_generation(
                    h,
                    interval_ms,
                    failed_ms,
                    start_timeout_ms,
                    expected_workers,
                    crash_loop_intensity,
                    crash_loop_period_ms,
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
        Call::ConfigurationClosed(_, ref generation, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let generation = generation_of(model, generation);
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            unsafe { wm_configuration_closed(h, generation, ebuf, elen) }
        }
        Call::RegisterWorker {
            ref generation,
            index,
            err,
            ..
        } => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let generation = generation_of(model, generation);
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_register_worker(h, generation, index, ebuf, elen) };
            let handle = &mut model.handles[i];
            if handle.worker {
                assert_eq!(code, WM_ERR_WORKER);
            } else if code == WM_OK {
                handle.worker = true;
            }
            code
        }
        Call::Heartbeat(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_heartbeat(h, ebuf, elen) };
            if !model.handles[i].worker {
                assert_eq!(code, WM_ERR_WORKER);
            }
            code
        }
        Call::IsLeader(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let (mut leads, mut term) = (-1, 0u64);
            // SAFETY: an open handle; `leads` and `term` are valid for a write;
            // `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_is_leader(h, &mut leads, &mut term, ebuf, elen) };
            assert_eq!(code, WM_OK);
            assert!(leads == 0 || (leads == 1 && model.handles[i].worker && term > 0));
            code
        }
        Call::LeaderWord(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut word = 0u64;
            // SAFETY: an open handle; `word` is valid for a write; `ebuf`, `elen` are
            // NULL or valid.
            unsafe { wm_leader_word(h, &mut word, ebuf, elen) }
        }
        Call::Leader(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut out = wm_leader::default();
            // SAFETY: an open handle; `out` is valid for a write; `ebuf`, `elen` are
            // NULL or valid.
            let code = unsafe { wm_leader(h, &mut out, ebuf, elen) };
            if code == WM_OK {
                assert_eq!(out.pid == 0, out.index == -1, "{out:?}");
                assert!(out.mine == 0 || model.handles[i].worker);
            }
            code
        }
        Call::Resign(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_resign(h, ebuf, elen) };
            if !model.handles[i].worker {
                assert_eq!(code, WM_ERR_WORKER);
            }
            code
        }
        Call::AnnounceExit(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_announce_exit(h, ebuf, elen) };
            if !model.handles[i].worker {
                assert_eq!(code, WM_ERR_WORKER);
            }
            code
        }
        Call::ExitWorker { graceful, err, .. } => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_exit_worker(h, graceful, ebuf, elen) };
            let handle = &mut model.handles[i];
            if !handle.worker {
                assert_eq!(code, WM_ERR_WORKER);
            }
            // The worker is consumed whatever the outcome.
            handle.worker = false;
            code
        }
        Call::Sweep(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            unsafe { wm_sweep(h, ebuf, elen) }
        }
        Call::EventsCount(_) => {
            // SAFETY: an open handle.
            let _ = unsafe { wm_events_count(h) };
            return;
        }
        Call::EventGet(_, ref at, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle.
            let count = unsafe { wm_events_count(h) };
            let at = index(at, count);
            let mut event = wm_event::default();
            // SAFETY: an open handle; `event` is valid for a write; `ebuf`, `elen`
            // are NULL or valid.
            let code = unsafe { wm_event_get(h, at, &mut event, ebuf, elen) };
            assert_eq!(code == WM_OK, at < count, "event {at} of {count}: {code}");
            if code == WM_OK {
                assert_ne!(event.seq, 0);
                assert!(EventKind::from_code(event.kind).is_some());
            }
            code
        }
        Call::EventDone(_, ref at, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            // SAFETY: an open handle.
            let count = unsafe { wm_events_count(h) };
            let mut event = wm_event::default();
            let seq = match *at {
                Index::Raw(n) => u64::from(n),
                ref at => {
                    // SAFETY: an open handle; `event` is valid; no error buffer.
                    unsafe {
                        wm_event_get(
                            h,
                            index(at, count),
                            &mut event,
                            ptr::null_mut(),
                            ptr::null_mut(),
                        )
                    };
                    event.seq
                }
            };
            // SAFETY: an open handle; `ebuf`, `elen` are NULL or valid.
            let code = unsafe { wm_event_done(h, seq, ebuf, elen) };
            assert_eq!(
                code == WM_OK,
                model.handles[i].holds > 0,
                "done without the lock: {code}"
            );
            code
        }
        Call::EventsClear(_) => {
            // SAFETY: an open handle.
            unsafe {
                wm_events_clear(h);
                assert_eq!(wm_events_count(h), 0);
            }
            return;
        }
        Call::Snapshot(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut status = wm_status {
                consistent: -1,
                ..wm_status::default()
            };
            // SAFETY: an open handle; `status` is valid; `ebuf`, `elen` are NULL or
            // valid.
            let code = unsafe { wm_snapshot(h, &mut status, ebuf, elen) };
            if code == WM_OK {
                assert!(status.generations <= 65536 && status.workers <= 65536);
                assert!(status.next_seq >= 1);
                assert!(status.consistent == 0 || status.consistent == 1);
                assert!(status.verdict <= 2);
                model.handles[i].snapshot = Some((status.generations, status.workers));
            }
            code
        }
        Call::SnapshotGeneration(_, ref at, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let count = model.handles[i].snapshot.map_or(0, |s| s.0);
            let at = index(at, count);
            let mut out = wm_generation::default();
            // SAFETY: an open handle; `out` is valid for a write; `ebuf`, `elen` are
            // NULL or valid.
            let code = unsafe { wm_snapshot_generation(h, at, &mut out, ebuf, elen) };
            assert_eq!(
                code == WM_OK,
                at < count,
                "generation {at} of {count}: {code}"
            );
            if code == WM_OK {
                assert_ne!(out.id, 0);
                model.seen = out.id;
            }
            code
        }
        Call::SnapshotCrashLoop(_, ref at, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let at = index(at, 64);
            let mut out = wm_crash_loop::default();
            // SAFETY: an open handle; `out` is valid for a write; `ebuf`, `elen` are
            // NULL or valid.
            unsafe { wm_snapshot_crash_loop(h, at, &mut out, ebuf, elen) }
        }
        Call::SnapshotWorker(_, ref at, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let count = model.handles[i].snapshot.map_or(0, |s| s.1);
            let at = index(at, count);
            let mut out = wm_worker::default();
            // SAFETY: an open handle; `out` is valid for a write; `ebuf`, `elen` are
            // NULL or valid.
            let code = unsafe { wm_snapshot_worker(h, at, &mut out, ebuf, elen) };
            assert_eq!(code == WM_OK, at < count, "worker {at} of {count}: {code}");
            if code == WM_OK {
                let state = WorkerState::ALL.iter().find(|s| s.code() == out.state);
                assert!(state.is_some_and(|&s| s != WorkerState::Free));
            }
            code
        }
        Call::Metrics(_, err) => {
            e = ErrSlot::new(err);
            let (ebuf, elen) = e.args();
            let mut text: *const c_char = ptr::null();
            let mut len = 0usize;
            // SAFETY: an open handle; `text` and `len` are valid; `ebuf`, `elen` are
            // NULL or valid.
            let code = unsafe { wm_metrics(h, &mut text, &mut len, ebuf, elen) };
            let handle = &mut model.handles[i];
            handle.metrics = None;
            if code == WM_OK {
                assert!(!text.is_null());
                // SAFETY: the library returned `len` bytes at `text`, valid until the
                // handle's next `wm_metrics`.
                let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
                let body = std::str::from_utf8(bytes).expect("metrics are UTF-8");
                assert!(body.starts_with("# HELP worker_manager_"));
                handle.metrics = Some((text, len, bytes.to_vec()));
            }
            code
        }
        Call::MetricsAgain(_) => {
            if let Some((text, len, ref copy)) = model.handles[i].metrics {
                // SAFETY: no `wm_metrics` of this handle ran since it returned this.
                let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
                assert_eq!(
                    bytes,
                    &copy[..],
                    "the metrics text changed under the caller"
                );
            }
            return;
        }
        Call::AbiVersion
        | Call::Name { .. }
        | Call::DefaultPath { .. }
        | Call::Open { .. }
        | Call::Close(_) => unreachable!("handled above"),
    };
    check(call, code, &e);
}

/// A call given a NULL handle: refused, never dereferenced.
fn run_null(call: &Call) {
    let mut e = ErrSlot::new(ErrArg::Valid);
    let (ebuf, elen) = e.args();
    let h = ptr::null_mut();
    // SAFETY: a NULL handle, which every entry point checks; valid buffers.
    let code = unsafe {
        match *call {
            Call::Lock(..) => wm_lock(h, ebuf, elen),
            Call::Sweep(..) => wm_sweep(h, ebuf, elen),
            Call::Heartbeat(..) => wm_heartbeat(h, ebuf, elen),
            Call::Snapshot(..) => {
                let mut status = wm_status::default();
                wm_snapshot(h, &mut status, ebuf, elen)
            }
            Call::EventsCount(_) => {
                assert_eq!(wm_events_count(h), 0);
                return;
            }
            Call::EventsClear(_) => {
                wm_events_clear(h);
                return;
            }
            _ => wm_unlock(h, ebuf, elen),
        }
    };
    assert_eq!(code, WM_ERR_NOT_OPEN, "{call:?} with a NULL handle");
    check(call, code, &e);
}

/// Lets every worker exit, releases every holding and closes every handle, so that
/// the next input starts from the registry files alone.
fn settle(model: &mut Model) {
    for i in 0..model.handles.len() {
        if model.handles[i].worker {
            let call = Call::ExitWorker {
                h: HandleArg::Nth(i as u8),
                graceful: 1,
                err: ErrArg::Valid,
            };
            run(model, &call);
        }
        let mut err = ErrSlot::new(ErrArg::Valid);
        let handle = &mut model.handles[i];
        while handle.holds > 0 {
            let (buf, len) = err.args();
            // SAFETY: an open handle and a valid error buffer.
            assert_eq!(unsafe { wm_unlock(handle.ptr, buf, len) }, WM_OK);
            handle.holds -= 1;
        }
        let (buf, len) = err.args();
        // SAFETY: as above.
        assert_eq!(
            unsafe { wm_unlock(handle.ptr, buf, len) },
            WM_ERR_NOT_LOCKED
        );
    }
    while !model.handles.is_empty() {
        close(model, 0);
    }
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
