//! The one error type of the library.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong, each variant naming its cause and, where there is
/// one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on the registry file failed.
    #[error("registry {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The registry path is a symbolic link; it is never followed.
    #[error("registry {path} is a symbolic link; refusing to follow it: point the path at the real file")]
    Symlink { path: PathBuf },

    /// The registry path is not a regular file.
    #[error("registry {path} is not a regular file")]
    NotRegularFile { path: PathBuf },

    /// The registry file belongs to another user.
    #[error("registry {path} is owned by uid {owner}, but this process runs as uid {euid}: remove it or run as its owner")]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },

    /// The registry file can be written by any user.
    #[error("registry {path} is writable by any user (mode {mode:o}); refusing it: remove it")]
    WorldWritable { path: PathBuf, mode: u32 },

    /// There is no room to reserve the registry's size.
    #[error("registry {path}: no space left to reserve {bytes} bytes: free space in that file system or choose another path")]
    NoSpace { path: PathBuf, bytes: u64 },

    /// The file is shorter than its header says, or than any header.
    #[error(
        "registry {path} is truncated: {len} bytes, but at least {expected} are needed: remove it"
    )]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
    },

    /// The file has no magic number: zero-filled, or never initialised.
    #[error("registry {path} is not initialised (no magic number; zero-filled?): remove it")]
    NotInitialised { path: PathBuf },

    /// The file is something else.
    #[error("registry {path} is not a worker-manager registry (magic {magic:#018x}): remove it or choose another path")]
    ForeignMagic { path: PathBuf, magic: u64 },

    /// The file was written by a newer build.
    #[error("registry {path} was written by layout version {found}; this build reads version {supported}: remove it or upgrade")]
    NewerLayout {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The file was written by an older build.
    #[error("registry {path} was written by layout version {found}; this build reads version {supported}: remove it (stop the old build first)")]
    OlderLayout {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The file's geometry does not match what this build expects.
    #[error("registry {path} is incompatible: {what}: remove it")]
    Incompatible { path: PathBuf, what: String },

    /// The registry lock could not be had in time.
    #[error(
        "registry lock not acquired within {timeout:?}: held by pid {holder_pid} for {holder_op}"
    )]
    LockTimeout {
        timeout: Duration,
        holder_pid: u32,
        holder_op: &'static str,
    },

    /// The registry lock is permanently unusable (a repair failed half-way).
    #[error("registry lock is not recoverable: remove the registry file once the node is stopped")]
    LockNotRecoverable,

    /// A pthread call failed in a way that is not one of the above.
    #[error("{call} failed: {source}")]
    Os {
        call: &'static str,
        #[source]
        source: io::Error,
    },

    /// Another live master, not this process's parent, owns the newest generation:
    /// two servers were given the same registry.
    #[error("registry {path} is in use by another running master (pid {master_pid}): give each server its own registry path")]
    InUse { path: PathBuf, master_pid: u32 },

    /// A fixed-capacity table is full.
    #[error("registry full: all {capacity} {what} slots are in use: create the registry with a larger capacity")]
    CapacityExhausted { what: &'static str, capacity: u32 },

    /// An argument is out of its range.
    #[error("invalid {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },

    /// The generation is not tracked (never registered, or retired).
    #[error("generation {0} is not tracked by this registry")]
    UnknownGeneration(u64),

    /// The worker handle no longer matches its slot.
    #[error("worker {0} is not registered (already exited, or declared dead)")]
    NotRegistered(String),

    /// A process to be signalled is not the one its [`Identity`](crate::Identity)
    /// names: it exited, or its pid now belongs to another process. Nothing was sent.
    #[error("process {pid} is gone (it exited, or its pid now belongs to another process): {signal} not sent")]
    ProcessGone { pid: u32, signal: &'static str },

    /// A signal could not be sent to a live process (permission, a kernel without
    /// pidfds).
    #[error("cannot send {signal} to process {pid}: {source}")]
    Signal {
        pid: u32,
        signal: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Turns a pthread-style return code (0 or an errno value) into a `Result`.
pub(crate) fn pthread_result(call: &'static str, code: libc::c_int) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Os {
            call,
            source: io::Error::from_raw_os_error(code),
        })
    }
}

/// Turns a `-1 and errno` return into a `Result`.
pub(crate) fn errno_result(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
