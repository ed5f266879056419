//! The C ABI called as C calls it: handles, status codes, messages written into the
//! caller's buffer, bad arguments, one whole life of a worker, and two handles (the
//! http and stream Lua VMs of one nginx) in one process.

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr;

use worker_manager::{EventKind, Observer};
use worker_manager_ffi::*;

/// A caller-owned error buffer, as the Lua module keeps one.
struct ErrBuf {
    buf: [c_char; 256],
    len: usize,
}

impl ErrBuf {
    fn new() -> ErrBuf {
        ErrBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    /// The buffer, emptied, as a call's last two arguments.
    fn args(&mut self) -> (*mut c_char, *mut usize) {
        self.len = self.buf.len();
        (self.buf.as_mut_ptr(), &mut self.len)
    }

    fn message(&self) -> String {
        // SAFETY: the library NUL-terminated what it wrote within the buffer.
        let text = unsafe { CStr::from_ptr(self.buf.as_ptr()) };
        assert_eq!(
            text.to_bytes().len(),
            self.len,
            "the length matches the text"
        );
        text.to_string_lossy().into_owned()
    }
}

macro_rules! call {
    ($err:ident, $f:ident($($arg:expr),*)) => {{
        let (buf, len) = $err.args();
        $f($($arg,)* buf, len)
    }};
}

fn c(text: &str) -> CString {
    CString::new(text).unwrap()
}

fn c_path(path: &Path) -> CString {
    c(path.to_str().unwrap())
}

/// Opens `path` for `subsystem`: the status and the handle.
fn open(path: &Path, subsystem: &str, err: &mut ErrBuf) -> (i32, *mut wm_handle) {
    let mut handle: *mut wm_handle = ptr::null_mut();
    let (path, subsystem) = (c_path(path), c(subsystem));
    // SAFETY: valid C strings, out-parameter and error buffer.
    let rc = unsafe {
        call!(
            err,
            wm_open(path.as_ptr(), subsystem.as_ptr(), 1000, &mut handle)
        )
    };
    (rc, handle)
}

/// The kinds of the events in a handle's buffer, which is emptied.
///
/// # Safety
///
/// `h` is an open handle.
unsafe fn take_kinds(h: *mut wm_handle) -> Vec<u32> {
    let mut err = ErrBuf::new();
    // SAFETY: guaranteed by the caller.
    unsafe {
        let kinds = (0..wm_events_count(h))
            .map(|i| {
                let mut e = wm_event::default();
                assert_eq!(call!(err, wm_event_get(h, i, &mut e)), WM_OK);
                e.kind
            })
            .collect();
        wm_events_clear(h);
        kinds
    }
}

#[test]
fn bad_calls_give_their_status_and_a_message() {
    let mut err = ErrBuf::new();
    let mut handle: *mut wm_handle = ptr::null_mut();
    let http = c("http");
    // SAFETY: arguments as the header describes (NULL path on purpose).
    let rc = unsafe { call!(err, wm_open(ptr::null(), http.as_ptr(), 1000, &mut handle)) };
    assert_eq!(rc, WM_ERR_INVALID_ARGUMENT);
    assert!(err.message().contains("invalid path"));
    assert!(handle.is_null(), "no handle on failure");
    // SAFETY: a NULL handle is refused, never dereferenced.
    let rc = unsafe { call!(err, wm_heartbeat(ptr::null_mut())) };
    assert_eq!(rc, WM_ERR_NOT_OPEN);
    assert!(err.message().contains("no handle"), "{}", err.message());
    // SAFETY: as above; a NULL error buffer is allowed.
    let rc = unsafe { wm_sweep(ptr::null_mut(), ptr::null_mut(), ptr::null_mut()) };
    assert_eq!(rc, WM_ERR_NOT_OPEN);
    // SAFETY: NULL is ignored.
    unsafe { wm_close(ptr::null_mut()) };

    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.wm");
    std::fs::write(&foreign, vec![b'x'; 8192]).unwrap();
    assert_eq!(open(&foreign, "http", &mut err).0, WM_ERR_FOREIGN_MAGIC);
    assert!(err.message().contains("not a worker-manager registry"));

    let (rc, h) = open(&dir.path().join("r.wm"), "http", &mut err);
    assert_eq!(rc, WM_OK);
    // SAFETY: an open handle, valid out-parameters and error buffers.
    unsafe {
        assert_eq!(call!(err, wm_unlock(h)), WM_ERR_NOT_LOCKED);
        assert!(err.message().contains("unlock without a lock"));
        let mut e = wm_event::default();
        assert_eq!(call!(err, wm_event_get(h, 0, &mut e)), WM_ERR_RANGE);
        assert!(err.message().contains("no event 0"));
        wm_close(h);
    }
    assert_eq!(wm_abi_version(), WM_ABI_VERSION);
}

/// A message longer than the buffer is cut to fit, NUL-terminated, and a buffer of
/// capacity 0 or 1 is never written past.
#[test]
fn messages_are_cut_to_the_callers_buffer() {
    let long = c(&format!("/nonexistent/{}/r.wm", "d".repeat(300)));
    let http = c("http");
    let mut handle: *mut wm_handle = ptr::null_mut();
    let mut small = [0x55 as c_char; 17];
    let mut len = 16usize;
    // SAFETY: the buffer holds 17 bytes and says 16: the last one must stay untouched.
    let rc = unsafe {
        wm_open(
            long.as_ptr(),
            http.as_ptr(),
            1000,
            &mut handle,
            small.as_mut_ptr(),
            &mut len,
        )
    };
    assert_ne!(rc, WM_OK);
    assert_eq!(len, 15);
    assert_eq!(small[15], 0);
    assert_eq!(small[16], 0x55, "written past the capacity");
    for capacity in [0usize, 1] {
        let mut byte = [0x55 as c_char; 1];
        let mut len = capacity;
        // SAFETY: a buffer of `capacity` bytes (at most 1).
        unsafe {
            wm_open(
                long.as_ptr(),
                http.as_ptr(),
                1000,
                &mut handle,
                byte.as_mut_ptr(),
                &mut len,
            )
        };
        assert_eq!(byte[0], if capacity == 1 { 0 } else { 0x55 });
    }
}

#[test]
fn a_worker_lifetime_through_the_abi() {
    let dir = tempfile::tempdir().unwrap();
    let mut err = ErrBuf::new();
    let (rc, h) = open(&dir.path().join("r.wm"), "http", &mut err);
    assert_eq!(rc, WM_OK);
    let mut generation = 0u64;
    // SAFETY: an open handle, valid out-parameters and error buffers throughout.
    unsafe {
        assert_eq!(call!(err, wm_lock(h)), WM_OK);
        assert_eq!(
            call!(
                err,
                wm_register_generation(h, 10_000, 5_000, 60_000, 1, 5, 30_000, &mut generation)
            ),
            WM_OK
        );
        assert_eq!(wm_events_count(h), 1);
        let mut e = wm_event::default();
        assert_eq!(call!(err, wm_event_get(h, 0, &mut e)), WM_OK);
        assert_eq!(
            (e.kind, e.generation, e.n_prev, e.n_mine, e.flags),
            (1, generation, -1, 0, 0)
        );
        assert_eq!(call!(err, wm_event_done(h, e.seq)), WM_OK);
        assert_eq!(call!(err, wm_unlock(h)), WM_OK);
        assert_eq!(call!(err, wm_event_done(h, e.seq)), WM_ERR_NOT_LOCKED);
        wm_events_clear(h);
        assert_eq!(call!(err, wm_heartbeat(h)), WM_ERR_WORKER);
        assert_eq!(call!(err, wm_register_worker(h, generation, 0)), WM_OK);
        assert_eq!(
            call!(err, wm_register_worker(h, generation, 1)),
            WM_ERR_WORKER
        );
        assert_eq!(call!(err, wm_heartbeat(h)), WM_OK);
        let mut status = wm_status::default();
        assert_eq!(call!(err, wm_snapshot(h, &mut status)), WM_OK);
        assert_eq!(
            (
                status.generations,
                status.workers,
                status.run_state,
                status.consistent
            ),
            (1, 1, 1, 1)
        );
        assert_eq!((status.verdict_generation, status.verdict), (generation, 1));
        let mut g = wm_generation::default();
        assert_eq!(call!(err, wm_snapshot_generation(h, 0, &mut g)), WM_OK);
        assert_ne!(g.committed_ns, 0, "its worker committed it");
        let mut w = wm_worker::default();
        assert_eq!(call!(err, wm_snapshot_worker(h, 0, &mut w)), WM_OK);
        assert_eq!((w.pid, w.state), (std::process::id(), 1));
        assert_eq!(call!(err, wm_snapshot_worker(h, 1, &mut w)), WM_ERR_RANGE);
        // The only worker leads, from the first term.
        let (mut leads, mut term) = (0, 0u64);
        assert_eq!(call!(err, wm_is_leader(h, &mut leads, &mut term)), WM_OK);
        assert_eq!((leads, term), (1, 1));
        let mut leader = wm_leader::default();
        assert_eq!(call!(err, wm_leader(h, &mut leader)), WM_OK);
        assert_eq!(
            (leader.pid, leader.index, leader.term, leader.mine),
            (std::process::id(), 0, 1, 1)
        );
        assert_eq!(call!(err, wm_exit_worker(h, 1)), WM_OK);
        let kinds = take_kinds(h);
        assert_eq!(
            kinds,
            [2, 12, 3, 4, 12],
            "worker_start, leader_elected, worker_exit, master_exit, leader_elected"
        );
        assert_eq!(call!(err, wm_leader(h, &mut leader)), WM_OK);
        assert_eq!((leader.pid, leader.index, leader.term), (0, -1, 2));
        assert_eq!(call!(err, wm_exit_worker(h, 1)), WM_ERR_WORKER);
        // The message of a failing heartbeat is in the caller's buffer, whatever
        // failed before it.
        assert_eq!(call!(err, wm_heartbeat(h)), WM_ERR_WORKER);
        assert!(
            err.message().contains("no registered worker"),
            "{}",
            err.message()
        );
        wm_close(h);
    }
}

/// nginx's http and stream subsystems: two Lua VMs in one process, each with its
/// own handle on its own registry, each registering the same process as a worker.
/// Each registry sees exactly its own events; a third subsystem cannot share one
/// of theirs; a reload's new VM shares its predecessor's mapping.
#[test]
fn two_handles_in_one_process_track_independently() {
    let dir = tempfile::tempdir().unwrap();
    let (http_path, stream_path) = (dir.path().join("http.wm"), dir.path().join("stream.wm"));
    let mut err = ErrBuf::new();
    let (rc, http) = open(&http_path, "http", &mut err);
    assert_eq!(rc, WM_OK);
    let (rc, stream) = open(&stream_path, "stream", &mut err);
    assert_eq!(rc, WM_OK);
    let (rc, _) = open(&http_path, "stream", &mut err);
    assert_eq!(rc, WM_ERR_SHARED);
    assert!(
        err.message().contains("used by the http subsystem"),
        "{}",
        err.message()
    );
    let (mut g_http, mut g_stream) = (0, 0);
    // SAFETY: open handles, valid out-parameters and error buffers throughout.
    unsafe {
        assert_eq!(
            call!(
                err,
                wm_register_generation(http, 10_000, 5_000, 60_000, 1, 5, 30_000, &mut g_http)
            ),
            WM_OK
        );
        assert_eq!(
            call!(
                err,
                wm_register_generation(stream, 10_000, 5_000, 60_000, 1, 5, 30_000, &mut g_stream)
            ),
            WM_OK
        );
        assert_eq!(call!(err, wm_register_worker(http, g_http, 0)), WM_OK);
        assert_eq!(call!(err, wm_register_worker(stream, g_stream, 0)), WM_OK);
        // Each subsystem's registry elects its own leader.
        assert_eq!(take_kinds(http), [1, 2, 12]);
        assert_eq!(take_kinds(stream), [1, 2, 12]);

        // A reload of the http subsystem: a new VM, a new handle on the same
        // registry; the old VM's end commits the new configuration.
        let (rc, http2) = open(&http_path, "http", &mut err);
        assert_eq!(rc, WM_OK);
        let mut g_http2 = 0;
        assert_eq!(
            call!(
                err,
                wm_register_generation(http2, 10_000, 5_000, 60_000, 1, 5, 30_000, &mut g_http2)
            ),
            WM_OK
        );
        assert_eq!(call!(err, wm_configuration_closed(http, g_http)), WM_OK);
        let start = &take_kinds(http2);
        assert_eq!(start, &[EventKind::MasterStart.code()]);

        // Each exit goes to its own registry.
        assert_eq!(call!(err, wm_exit_worker(http, 1)), WM_OK);
        assert_eq!(call!(err, wm_exit_worker(stream, 0)), WM_OK);
        assert_eq!(
            take_kinds(http),
            [3, 4, 12],
            "worker_exit, master_exit (reload), leader_elected (none)"
        );
        assert_eq!(
            take_kinds(stream),
            [3, 4, 12],
            "worker_exit, master_exit (fast stop), leader_elected (none)"
        );
        wm_close(http);
        wm_close(http2);
        wm_close(stream);
    }
    let http_events = Observer::open(&http_path).unwrap().events_since(1);
    let stream_events = Observer::open(&stream_path).unwrap().events_since(1);
    assert_eq!(http_events.len(), 7, "{http_events:#?}");
    assert_eq!(stream_events.len(), 6, "{stream_events:#?}");
    assert!(http_events
        .iter()
        .chain(&stream_events)
        .all(|e| e.kind() != EventKind::WorkerCrash));
}

/// The names of `names` (a `WM_NAMES_*`) by code, as the Lua module reads them.
fn names_of(names: u32) -> Vec<(u32, String)> {
    let mut all = Vec::new();
    for i in 0.. {
        let (mut code, mut len) = (0, 0);
        // SAFETY: valid out-parameters.
        let name = unsafe { wm_name(names, i, &mut code, &mut len) };
        if name.is_null() {
            break;
        }
        // SAFETY: the library's static text of `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len) };
        all.push((code, String::from_utf8(bytes.to_vec()).unwrap()));
    }
    all
}

/// Every variant of every coded enum, as `wm_name` gives it to the Lua module.
#[test]
fn the_library_names_every_code() {
    use worker_manager::lifecycle::*;

    fn names<T: Copy>(
        all: &[T],
        code: impl Fn(T) -> u32,
        name: impl Fn(T) -> &'static str,
    ) -> Vec<(u32, String)> {
        all.iter()
            .map(|&v| (code(v), name(v).to_string()))
            .collect()
    }
    let run_states = [
        RunState::Never,
        RunState::Running,
        RunState::Ended(RunEnd::Clean),
        RunState::Ended(RunEnd::Unclean),
    ];
    let expected = [
        (
            WM_NAMES_EVENT_KIND,
            names(EventKind::ALL, EventKind::code, EventKind::as_str),
        ),
        (
            WM_NAMES_START_KIND,
            names(StartKind::ALL, StartKind::code, StartKind::as_str),
        ),
        (
            WM_NAMES_RUN_END,
            names(RunEnd::ALL, RunEnd::code, RunEnd::as_str),
        ),
        (
            WM_NAMES_EXIT_REASON,
            names(ExitReason::ALL, ExitReason::code, ExitReason::as_str),
        ),
        (
            WM_NAMES_DETECTION,
            names(Detection::ALL, Detection::code, Detection::as_str),
        ),
        (
            WM_NAMES_ABORT_CAUSE,
            names(AbortCause::ALL, AbortCause::code, AbortCause::as_str),
        ),
        (
            WM_NAMES_LOCK_OP,
            names(LockOp::ALL, LockOp::code, LockOp::as_str),
        ),
        (
            WM_NAMES_GENERATION_STATE,
            names(
                GenerationState::ALL,
                GenerationState::code,
                GenerationState::as_str,
            ),
        ),
        (
            WM_NAMES_WORKER_STATE,
            names(WorkerState::ALL, WorkerState::code, WorkerState::as_str),
        ),
        (
            WM_NAMES_RUN_STATE,
            names(&run_states, RunState::code, RunState::as_str),
        ),
    ];
    for (set, codes) in expected {
        assert_eq!(names_of(set), codes, "WM_NAMES_* {set}");
    }
    assert_eq!(names_of(0), [], "an unknown set has no names");
    assert_eq!(names_of(99), []);
    // SAFETY: NULL out-parameters are allowed.
    let name = unsafe { wm_name(WM_NAMES_EVENT_KIND, 0, ptr::null_mut(), ptr::null_mut()) };
    assert!(!name.is_null());
}

/// The path of a name as the core derives it, and the name checked as the CLI
/// checks it.
#[test]
fn the_default_path_is_the_core_s() {
    let mut err = ErrBuf::new();
    let derive = |shm: &[u8], capacity: usize, err: &mut ErrBuf| {
        let (prefix, http) = (c("/usr/local/openresty/nginx/"), c("stream"));
        let mut path = vec![0 as c_char; capacity];
        let mut len = capacity;
        // SAFETY: valid strings, buffers and lengths.
        let rc = unsafe {
            call!(
                err,
                wm_default_path(
                    prefix.as_ptr(),
                    shm.as_ptr().cast(),
                    shm.len(),
                    http.as_ptr(),
                    path.as_mut_ptr(),
                    &mut len
                )
            )
        };
        let text: Vec<u8> = path[..len.min(capacity)].iter().map(|&b| b as u8).collect();
        (rc, String::from_utf8(text).unwrap())
    };
    let expected =
        worker_manager::naming::default_path("/usr/local/openresty/nginx/", "wm", "stream");
    assert_eq!(
        derive(b"wm", 256, &mut err),
        (WM_OK, expected.to_str().unwrap().to_string())
    );
    for bad in [&b""[..], b"a/b", b"a\0b", b"\xff"] {
        let (rc, _) = derive(bad, 256, &mut err);
        assert_eq!(rc, WM_ERR_INVALID_ARGUMENT, "{bad:?}");
        assert!(
            err.message().starts_with("may only hold letters, digits"),
            "{}",
            err.message()
        );
    }
    let (rc, _) = derive(b"wm", 10, &mut err);
    assert_eq!(rc, WM_ERR_RANGE);
    assert!(err.message().contains("needs"), "{}", err.message());
}
