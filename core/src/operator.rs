//! One operator at a time: the lock that serializes the commands acting on a node
//! (`worker-manager reload` and `upgrade`), so that two of them never signal the
//! same master at once nor take each other's generation for their own.
//!
//! It is a `flock` on a file of its own beside the registry, never on the registry
//! file: a master opening the registry (nginx's `init_by_lua`, during the very
//! reload an operator waits for) takes an exclusive `flock` on it, which an
//! operator holding it would block for as long as it waits.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

/// The operator lock of a registry, held until dropped (or until the holder dies:
/// the kernel releases a `flock` with its last descriptor).
#[derive(Debug)]
pub struct OperatorLock {
    /// Kept open: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl OperatorLock {
    /// The lock file of the registry at `registry`: `<registry>.lock`, beside it.
    pub fn path_for(registry: &Path) -> PathBuf {
        let mut name = registry.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the operator lock of the registry at `registry` if no other operator
    /// holds it, creating the lock file (mode 0600) if needed. `Ok(Err(holder))` when
    /// another does: the pid it wrote into the file, if it could be read.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the lock file cannot be opened or created (its directory
    /// not writable, a symbolic link at its path: never followed) or locked;
    /// [`Error::ForeignOwner`] when another user owns it.
    pub fn try_acquire(registry: &Path) -> Result<std::result::Result<OperatorLock, Option<u32>>> {
        let path = Self::path_for(registry);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| Error::Io { path, op, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("open the operator lock file"))?;
        // Another user's file would let that user hold every operator off.
        let owner = file
            .metadata()
            .map_err(io("fstat the operator lock file"))?
            .uid();
        let euid = sys::geteuid();
        if owner != euid {
            return Err(Error::ForeignOwner { path, owner, euid });
        }
        if !sys::try_lock_file(file.as_fd()).map_err(io("flock the operator lock file"))? {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Ok(Err(holder));
        }
        // Who holds it, for the message of an operator refused meanwhile; the lock
        // does not depend on it.
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", sys::getpid()));
        Ok(Ok(OperatorLock { _file: file, path }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operator_at_a_time_and_the_next_once_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry.wm");
        let first = OperatorLock::try_acquire(&registry).unwrap().unwrap();
        assert_eq!(first.path(), dir.path().join("registry.wm.lock"));
        assert!(!registry.exists(), "the registry is not touched");
        // Another open file description, as another process would have.
        let holder = OperatorLock::try_acquire(&registry).unwrap().unwrap_err();
        assert_eq!(holder, Some(std::process::id()));
        drop(first);
        let again = OperatorLock::try_acquire(&registry).unwrap();
        assert!(again.is_ok());
    }

    #[test]
    fn another_user_s_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry.wm");
        let lock = OperatorLock::path_for(&registry);
        std::fs::write(&lock, "").unwrap();
        let nobody = 65534;
        std::os::unix::fs::chown(&lock, Some(nobody), None)
            .expect("chown needs root, as the test suite runs");
        match OperatorLock::try_acquire(&registry) {
            Err(Error::ForeignOwner { owner, .. }) => assert_eq!(owner, nobody),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_symbolic_link_at_the_lock_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry.wm");
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, OperatorLock::path_for(&registry)).unwrap();
        match OperatorLock::try_acquire(&registry) {
            Err(Error::Io { op, .. }) => assert_eq!(op, "open the operator lock file"),
            other => panic!("{other:?}"),
        }
        assert!(!target.exists());
    }
}
