//! The C ABI called as C calls it: status codes, messages through the out-parameter,
//! bad arguments, and one whole life of a worker.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use worker_manager_ffi::*;

fn message(err: *const c_char) -> String {
    assert!(!err.is_null());
    // SAFETY: the library sets a NUL-terminated message valid until its next call.
    unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn bad_calls_give_their_status_and_a_message() {
    let mut err: *const c_char = ptr::null();
    // SAFETY: arguments as the header describes (NULL path on purpose).
    assert_eq!(
        unsafe { wm_open(ptr::null(), 1000, &mut err) },
        WM_ERR_INVALID_ARGUMENT
    );
    assert!(message(err).contains("invalid path"));
    assert_eq!(wm_heartbeat(), WM_ERR_NOT_OPEN);
    // SAFETY: valid out-parameter.
    assert_eq!(unsafe { wm_unlock(&mut err) }, WM_ERR_NOT_LOCKED);
    assert!(message(err).contains("unlock without a lock"));
    let mut e = wm_event::default();
    // SAFETY: valid out-parameter.
    assert_eq!(unsafe { wm_event_get(0, &mut e) }, WM_ERR_RANGE);
    // A NULL err is allowed.
    // SAFETY: as above.
    assert_eq!(unsafe { wm_sweep(ptr::null_mut()) }, WM_ERR_NOT_OPEN);
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.wm");
    std::fs::write(&foreign, vec![b'x'; 8192]).unwrap();
    let path = CString::new(foreign.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string and out-parameter.
    assert_eq!(
        unsafe { wm_open(path.as_ptr(), 1000, &mut err) },
        WM_ERR_FOREIGN_MAGIC
    );
    assert!(message(err).contains("not a worker-manager registry"));
    assert_eq!(wm_abi_version(), WM_ABI_VERSION);
}

#[test]
fn a_worker_lifetime_through_the_abi() {
    let dir = tempfile::tempdir().unwrap();
    let path = CString::new(dir.path().join("r.wm").to_str().unwrap()).unwrap();
    let mut err: *const c_char = ptr::null();
    let mut generation = 0u64;
    // SAFETY: valid C string and out-parameters throughout.
    unsafe {
        assert_eq!(wm_open(path.as_ptr(), 1000, &mut err), WM_OK);
        assert_eq!(wm_lock(&mut err), WM_OK);
        assert_eq!(
            wm_register_generation(10_000, 5_000, 60_000, 1, &mut generation, &mut err),
            WM_OK
        );
        assert_eq!(wm_unlock(&mut err), WM_OK);
        assert_eq!(wm_events_count(), 1);
        let mut e = wm_event::default();
        assert_eq!(wm_event_get(0, &mut e), WM_OK);
        assert_eq!(
            (e.kind, e.generation, e.n_prev, e.n_mine),
            (1, generation, -1, 0)
        );
        wm_events_clear();
        assert_eq!(wm_heartbeat(), WM_ERR_WORKER);
        assert_eq!(wm_register_worker(generation, 0, &mut err), WM_OK);
        assert_eq!(wm_register_worker(generation, 1, &mut err), WM_ERR_WORKER);
        assert_eq!(wm_heartbeat(), WM_OK);
        let (mut gens, mut workers, mut run, mut seq) = (0u32, 0u32, 0u32, 0u64);
        assert_eq!(
            wm_snapshot(&mut gens, &mut workers, &mut run, &mut seq, &mut err),
            WM_OK
        );
        assert_eq!((gens, workers, run), (1, 1, 1));
        let mut w = wm_worker::default();
        assert_eq!(wm_snapshot_worker(0, &mut w), WM_OK);
        assert_eq!((w.pid, w.state), (std::process::id(), 1));
        assert_eq!(wm_snapshot_worker(1, &mut w), WM_ERR_RANGE);
        assert_eq!(wm_exit_worker(1, &mut err), WM_OK);
        let kinds: Vec<u32> = (0..wm_events_count())
            .map(|i| {
                let mut e = wm_event::default();
                wm_event_get(i, &mut e);
                e.kind
            })
            .collect();
        assert_eq!(kinds, [2, 3, 4], "worker_start, worker_exit, master_exit");
        assert_eq!(wm_exit_worker(1, &mut err), WM_ERR_WORKER);
    }
}
