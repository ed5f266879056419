//! Thin wrappers over the few system calls the core makes outside the mapping and
//! the lock: clocks, signals and process ids. Each returns a plain value or a
//! `Result`; none keeps a pointer past the call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Once;
use std::time::Duration;

use crate::error::errno_result;

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clocks used here always exist
    // on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `CLOCK_MONOTONIC`: one clock for every process of the machine, so heartbeats
/// written by one process can be aged by another.
pub(crate) fn monotonic() -> Duration {
    clock(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME`, for timestamps shown to people and for pthread deadlines.
pub(crate) fn realtime() -> Duration {
    clock(libc::CLOCK_REALTIME)
}

/// The pid of this process, cached: `getpid` is a real system call (glibc stopped
/// caching it), and lock acquisitions record the holder's pid. A `fork` child clears
/// the cache through a `pthread_atfork` handler, installed before the first use.
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_pid_in_child() {
    PID.store(0, Relaxed);
}

pub(crate) fn getpid() -> u32 {
    static ATFORK: Once = Once::new();
    ATFORK.call_once(|| {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe,
        // as a handler that runs in a fork child must be.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
    });
    match PID.load(Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Relaxed);
            pid
        }
        pid => pid,
    }
}

pub(crate) fn getppid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `kill(pid, 0)`: whether a process with that pid exists. EPERM (a worker running as
/// `nobody` probing a root master) means it exists.
pub(crate) fn pid_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is sent.
    let ret = unsafe { libc::kill(pid as libc::pid_t, 0) };
    match errno_result(ret) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// Exclusive `flock` on an open file, waiting for it; released by [`unlock_file`] or
/// when the descriptor is closed (also when the holder dies).
pub(crate) fn lock_file(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: `fd` is a valid open descriptor for the duration of the call.
        let ret = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) };
        match errno_result(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

pub(crate) fn unlock_file(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call.
    errno_result(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) }).map(drop)
}

/// Exclusive `flock` on an open file if nobody holds it: `Ok(false)` when another
/// open file description does. Released when the descriptor is closed.
pub(crate) fn try_lock_file(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        // SAFETY: `fd` is a valid open descriptor for the duration of the call.
        let ret = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        match errno_result(ret) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `pidfd_open(pid, 0)`: a descriptor that refers to the process that has `pid` now,
/// and to no other process ever, even once the pid is reused (Linux 5.3).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor
    // or -1 with errno set.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = errno_result(ret as libc::c_int)?;
    // SAFETY: the kernel just returned `fd`, open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(fd, signal, NULL, 0)`: sends `signal` to the process `fd`
/// refers to, as `kill` would (Linux 5.1); ESRCH once it has exited.
pub(crate) fn pidfd_send_signal(fd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a valid pidfd for the duration of the call; a NULL siginfo
    // makes the kernel fill one in as `kill` does; flags must be 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    errno_result(ret as libc::c_int).map(drop)
}

/// Reserves the blocks of `[0, len)` so that stores into a mapping of the file can
/// never fault for lack of space (SIGBUS on a full tmpfs).
pub(crate) fn reserve(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor; posix_fallocate returns an errno
    // value instead of setting errno.
    let code = unsafe { libc::posix_fallocate(fd.as_raw_fd(), 0, len as libc::off_t) };
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(code))
    }
}

/// Sleeps until another process calls [`futex_wake`] on `word`, `timeout` passes, a
/// signal arrives, or `word` no longer holds `expected` (checked atomically by the
/// kernel on entry). A shared futex: `word` may sit in a mapping of another process,
/// read-only in this one. Every outcome is a possible wake-up; the caller rechecks.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned 32-bit word for the duration of the call and
    // `ts` a valid relative timeout; FUTEX_WAIT only reads the word. Its errors
    // (EAGAIN: the word moved, ETIMEDOUT, EINTR) all mean "recheck".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// Wakes every process sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned 32-bit word for the duration of the call;
    // FUTEX_WAKE neither reads nor writes it. It cannot fail on a valid address.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// Kills this process with SIGKILL, as `kill -9` from outside would.
#[cfg(feature = "crash-points")]
pub(crate) fn kill_self() -> ! {
    // SAFETY: raise has no memory-safety preconditions; SIGKILL cannot be caught.
    unsafe { libc::raise(libc::SIGKILL) };
    unreachable!("SIGKILL returned")
}
