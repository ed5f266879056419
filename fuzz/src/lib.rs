//! What the fuzz targets share: a private scratch directory for the registry files
//! they make, and the ways to leave a registry in the states that only a dead
//! process leaves behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use tempfile::TempDir;
use worker_manager::{Options, Registry};

static SCRATCH: OnceLock<TempDir> = OnceLock::new();

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = fs::remove_dir_all(dir.path());
    }
}

/// A directory of this process (mode 0700, under `$TMPDIR`), removed when the
/// process exits or panics. libFuzzer leaves through `_exit` after other crashes
/// (signals, timeouts, out of memory), which skips the removal: `scripts/fuzz.sh`
/// points `$TMPDIR` at a directory that it removes.
pub fn scratch_dir() -> &'static Path {
    SCRATCH
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("wm-fuzz-")
                .permissions(fs::Permissions::from_mode(0o700))
                .tempdir()
                .expect("creating the scratch directory");
            let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the scratch directory is private");
            // Statics are never dropped: the directory goes at exit or not at all.
            // SAFETY: `remove_scratch` is a plain function that stays valid for the
            // process's life.
            unsafe { libc::atexit(remove_scratch) };
            // libFuzzer's hook aborts on any panic, past `atexit`.
            let abort = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                remove_scratch();
                abort(info);
            }));
            dir
        })
        .path()
}

/// A registry handle with a lock timeout short enough that no fuzz iteration waits.
pub fn impatient() -> Options {
    Options {
        lock_timeout: std::time::Duration::from_millis(1),
        ..Options::default()
    }
}

/// Registers worker `index` of `generation` from a thread that then ends without
/// exiting, as a worker killed by a signal does: its slot mutex is left owner-died.
/// The thread's handle stays mapped (the kernel marks the mutex through it).
pub fn worker_dies(path: &Path, generation: u64, index: u32) {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let registry = Box::leak(Box::new(Registry::open(&path, &impatient()).unwrap()));
        // Dropped unused on purpose: this worker never heartbeats or exits.
        let _dies = registry
            .register_worker(generation, index, |_| {})
            .expect("registering the worker that dies");
    })
    .join()
    .unwrap();
}

/// Takes the registry lock from a thread that then ends holding it, as a process
/// killed inside a callback does: the next locker has to repair the registry.
pub fn holder_dies(path: &Path) {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let registry = Box::leak(Box::new(Registry::open(&path, &impatient()).unwrap()));
        let (hold, _) = registry.hold_lock().expect("taking the lock to die with");
        std::mem::forget(hold);
    })
    .join()
    .unwrap();
}
