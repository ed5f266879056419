//! The C ABI called as C calls it: status codes, messages written into the caller's
//! buffer, bad arguments, and one whole life of a worker.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

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

#[test]
fn bad_calls_give_their_status_and_a_message() {
    let mut err = ErrBuf::new();
    let (buf, len) = err.args();
    // SAFETY: arguments as the header describes (NULL path on purpose).
    let rc = unsafe { wm_open(ptr::null(), 1000, buf, len) };
    assert_eq!(rc, WM_ERR_INVALID_ARGUMENT);
    assert!(err.message().contains("invalid path"));
    let (buf, len) = err.args();
    // SAFETY: a valid error buffer.
    assert_eq!(unsafe { wm_heartbeat(buf, len) }, WM_ERR_NOT_OPEN);
    assert!(
        err.message().contains("no registry is open"),
        "{}",
        err.message()
    );
    let (buf, len) = err.args();
    // SAFETY: a valid error buffer.
    assert_eq!(unsafe { wm_unlock(buf, len) }, WM_ERR_NOT_LOCKED);
    assert!(err.message().contains("unlock without a lock"));
    let mut e = wm_event::default();
    let (buf, len) = err.args();
    // SAFETY: valid out-parameters.
    assert_eq!(unsafe { wm_event_get(0, &mut e, buf, len) }, WM_ERR_RANGE);
    assert!(err.message().contains("no event 0"));
    // A NULL buffer is allowed.
    // SAFETY: as above.
    let rc = unsafe { wm_sweep(ptr::null_mut(), ptr::null_mut()) };
    assert_eq!(rc, WM_ERR_NOT_OPEN);
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.wm");
    std::fs::write(&foreign, vec![b'x'; 8192]).unwrap();
    let path = CString::new(foreign.to_str().unwrap()).unwrap();
    let (buf, len) = err.args();
    // SAFETY: a valid C string and error buffer.
    let rc = unsafe { wm_open(path.as_ptr(), 1000, buf, len) };
    assert_eq!(rc, WM_ERR_FOREIGN_MAGIC);
    assert!(err.message().contains("not a worker-manager registry"));
    assert_eq!(wm_abi_version(), WM_ABI_VERSION);
}

/// A message longer than the buffer is cut to fit, NUL-terminated, and a buffer of
/// capacity 0 or 1 is never written past.
#[test]
fn messages_are_cut_to_the_callers_buffer() {
    let long = CString::new(format!("/nonexistent/{}/r.wm", "d".repeat(300))).unwrap();
    let mut small = [0x55 as c_char; 17];
    let mut len = 16usize;
    // SAFETY: the buffer holds 17 bytes and says 16: the last one must stay untouched.
    let rc = unsafe { wm_open(long.as_ptr(), 1000, small.as_mut_ptr(), &mut len) };
    assert_ne!(rc, WM_OK);
    assert_eq!(len, 15);
    assert_eq!(small[15], 0);
    assert_eq!(small[16], 0x55, "written past the capacity");
    for capacity in [0usize, 1] {
        let mut byte = [0x55 as c_char; 1];
        let mut len = capacity;
        // SAFETY: a buffer of `capacity` bytes (at most 1).
        unsafe { wm_open(long.as_ptr(), 1000, byte.as_mut_ptr(), &mut len) };
        assert_eq!(byte[0], if capacity == 1 { 0 } else { 0x55 });
    }
}

#[test]
fn a_worker_lifetime_through_the_abi() {
    let dir = tempfile::tempdir().unwrap();
    let path = CString::new(dir.path().join("r.wm").to_str().unwrap()).unwrap();
    let mut err = ErrBuf::new();
    let mut generation = 0u64;
    macro_rules! call {
        ($f:ident($($arg:expr),*)) => {{
            let (buf, len) = err.args();
            $f($($arg,)* buf, len)
        }};
    }
    // SAFETY: valid C string, out-parameters and error buffers throughout.
    unsafe {
        assert_eq!(call!(wm_open(path.as_ptr(), 1000)), WM_OK);
        assert_eq!(call!(wm_lock()), WM_OK);
        assert_eq!(
            call!(wm_register_generation(
                10_000,
                5_000,
                60_000,
                1,
                &mut generation
            )),
            WM_OK
        );
        assert_eq!(wm_events_count(), 1);
        let mut e = wm_event::default();
        assert_eq!(call!(wm_event_get(0, &mut e)), WM_OK);
        assert_eq!(
            (e.kind, e.generation, e.n_prev, e.n_mine, e.flags),
            (1, generation, -1, 0, 0)
        );
        assert_eq!(call!(wm_event_done(e.seq)), WM_OK);
        assert_eq!(call!(wm_unlock()), WM_OK);
        assert_eq!(call!(wm_event_done(e.seq)), WM_ERR_NOT_LOCKED);
        wm_events_clear();
        assert_eq!(call!(wm_heartbeat()), WM_ERR_WORKER);
        assert_eq!(call!(wm_register_worker(generation, 0)), WM_OK);
        assert_eq!(call!(wm_register_worker(generation, 1)), WM_ERR_WORKER);
        assert_eq!(call!(wm_heartbeat()), WM_OK);
        let (mut gens, mut workers, mut run, mut seq, mut consistent) = (0u32, 0u32, 0u32, 0u64, 0);
        assert_eq!(
            call!(wm_snapshot(
                &mut gens,
                &mut workers,
                &mut run,
                &mut seq,
                &mut consistent
            )),
            WM_OK
        );
        assert_eq!((gens, workers, run, consistent), (1, 1, 1, 1));
        let mut w = wm_worker::default();
        assert_eq!(call!(wm_snapshot_worker(0, &mut w)), WM_OK);
        assert_eq!((w.pid, w.state), (std::process::id(), 1));
        assert_eq!(call!(wm_snapshot_worker(1, &mut w)), WM_ERR_RANGE);
        assert_eq!(call!(wm_exit_worker(1)), WM_OK);
        let kinds: Vec<u32> = (0..wm_events_count())
            .map(|i| {
                let mut e = wm_event::default();
                call!(wm_event_get(i, &mut e));
                e.kind
            })
            .collect();
        assert_eq!(kinds, [2, 3, 4], "worker_start, worker_exit, master_exit");
        assert_eq!(call!(wm_exit_worker(1)), WM_ERR_WORKER);
        // The message of a failing heartbeat is in the caller's buffer, whatever
        // failed before it.
        assert_eq!(call!(wm_heartbeat()), WM_ERR_WORKER);
        assert!(
            err.message().contains("no registered worker"),
            "{}",
            err.message()
        );
    }
}
