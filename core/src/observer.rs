//! Reading a registry from outside the server: read-only, lock-free, never waiting
//! on a writer for more than [`OBSERVE_PATIENCE`](crate::OBSERVE_PATIENCE) if it died,
//! [`LIVE_WRITER_PATIENCE`](crate::LIVE_WRITER_PATIENCE) if it lives. See
//! `docs/design.md` section 7.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Acquire;
use std::time::Duration;

use crate::change;
use crate::error::Result;
use crate::event::Event;
use crate::journal;
use crate::region::map::{FileId, ReadOnly, Region};
use crate::region::Capacities;
use crate::snapshot::{self, Snapshot};

/// A registry mapped read-only. It never creates, writes or locks the file, so it
/// may run as any user who can read it, at any moment, as often as wanted.
pub struct Observer {
    region: Region<ReadOnly>,
    path: PathBuf,
    previous_boot: bool,
    /// The file mapped, as the path named it just after the mapping (`None`: it was
    /// gone by then).
    file: FileId,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("path", &self.path)
            .field("capacities", &self.region.capacities())
            .field("previous_boot", &self.previous_boot)
            .finish()
    }
}

impl Observer {
    /// Maps the existing registry at `path` read-only, after validating its header.
    ///
    /// # Errors
    ///
    /// - [`Error::Io`](crate::Error::Io) when opening, `fstat` or mapping the file
    ///   fails: a missing file is [`std::io::ErrorKind::NotFound`], one this user may
    ///   not read [`std::io::ErrorKind::PermissionDenied`];
    /// - [`Error::Symlink`](crate::Error::Symlink) and
    ///   [`Error::NotRegularFile`](crate::Error::NotRegularFile) for a path that is
    ///   not the registry file itself;
    /// - [`Error::NotInitialised`](crate::Error::NotInitialised) for an empty or
    ///   zero-filled file (one being created),
    ///   [`Error::Truncated`](crate::Error::Truncated) for one shorter than a header,
    ///   or than its header says;
    /// - [`Error::ForeignMagic`](crate::Error::ForeignMagic) for a file that is not a
    ///   registry, [`Error::NewerLayout`](crate::Error::NewerLayout) and
    ///   [`Error::OlderLayout`](crate::Error::OlderLayout) for one written by another
    ///   build, [`Error::Incompatible`](crate::Error::Incompatible) for one written on
    ///   another architecture or with capacities out of range.
    ///
    /// Unlike [`Registry::open`](crate::Registry::open) it creates nothing, takes no
    /// lock and does not check the file's owner: reading is all it does.
    pub fn open(path: impl AsRef<Path>) -> Result<Observer> {
        let path = path.as_ref();
        let (region, previous_boot, file) = Region::open_read_only(path)?;
        Ok(Observer {
            region,
            path: path.to_path_buf(),
            previous_boot,
            file,
        })
    }

    /// Whether the path still names the file mapped: false once it was removed or
    /// replaced (a restart with another registry), as for
    /// [`Registry::is_at_path`](crate::Registry::is_at_path). A symlink at the path is
    /// not the file, as it is never followed.
    pub fn is_at_path(&self) -> bool {
        FileId::of(&self.path).is_ok_and(|id| id == self.file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn capacities(&self) -> Capacities {
        self.region.capacities()
    }

    /// The file's size in bytes as its capacities lay it out.
    pub fn size(&self) -> u64 {
        self.region.capacities().offsets().total as u64
    }

    /// A picture of the registry, consistent unless a writer stayed in the middle of
    /// a change for longer than the patience (then `consistent` is false).
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = snapshot::observe(&self.region);
        snapshot.previous_boot = self.previous_boot;
        snapshot
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.region.header().next_seq.load(Acquire)
    }

    /// Journal entries from sequence number `from` on, oldest first. Entries the ring
    /// has overwritten are skipped: the first may be newer than `from`.
    pub fn events_since(&self, from: u64) -> Vec<Event> {
        journal::since(&self.region, from)
    }

    /// Sleeps until an event with a sequence number of at least `next` exists, or
    /// `timeout` passes; returns whether one does. No polling: writers wake the
    /// sleeper through a futex when they journal.
    pub fn wait_for_event(&self, next: u64, timeout: Duration) -> bool {
        change::wait_for_event(self.region.header(), next, timeout)
    }
}
