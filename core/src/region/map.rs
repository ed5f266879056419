//! Creating, validating and mapping the registry file. All `unsafe` of the mapping
//! lives here: the pointer arithmetic that turns the mapping into records.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, ManuallyDrop};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use memmap2::{MmapOptions, MmapRaw};

use super::layout::{
    Capacities, CrashHistory, EventRecord, GenerationRecord, Header, Offsets, WorkerSlot,
    HEADER_SIZE, LAYOUT_VERSION, MAGIC, RECORD_SIZE,
};
use crate::clock;
use crate::error::{Error, Result};
use crate::lock::RawMutex;
use crate::sys;

/// How an opening went, for the caller's information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The file did not exist (or was empty) and was created.
    Created,
    /// An existing registry of this boot.
    Existing,
    /// An existing registry written before the machine rebooted: its processes are
    /// all gone and its mutexes were initialised again.
    ResetAfterReboot,
}

/// A validated, mapped registry file.
/// A mapping the registry's writers use: read-write, its mutexes lockable.
#[derive(Debug)]
pub(crate) enum Writable {}

/// A `PROT_READ` mapping, for observers: a region of this kind has no way to its
/// mutexes, since locking one would write to a page that cannot be written.
#[derive(Debug)]
pub(crate) enum ReadOnly {}

pub(crate) struct Region<A = Writable> {
    map: ManuallyDrop<MmapRaw>,
    /// Set while a worker of this process holds a slot mutex: the mapping must then
    /// outlive the handle, for the kernel reaches held robust mutexes through it when
    /// the process dies.
    keep_mapped: AtomicBool,
    caps: Capacities,
    offsets: Offsets,
    access: PhantomData<A>,
}

fn io_error(path: &Path, op: &'static str, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// The kernel's boot id, as two integers; zero when it cannot be read.
fn boot_id() -> [u64; 2] {
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = text.chars().filter(char::is_ascii_hexdigit).collect();
    let value = u128::from_str_radix(&hex, 16).unwrap_or(0);
    [(value >> 64) as u64, value as u64]
}

fn open_file(path: &Path, mode: u32) -> Result<File> {
    let open_existing = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    let result = match open_existing() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
            {
                // Another process created it between the two calls.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_existing(),
                other => other,
            }
        }
        other => other,
    };
    result.map_err(|e| open_error(path, e))
}

/// An `open` with `O_NOFOLLOW` fails with ELOOP on a symlink.
fn open_error(path: &Path, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => Error::Symlink {
            path: path.to_path_buf(),
        },
        _ => io_error(path, "open", e),
    }
}

/// The file's metadata, once it is known to be a regular file.
fn regular_file(path: &Path, file: &File) -> Result<fs::Metadata> {
    let meta = file.metadata().map_err(|e| io_error(path, "fstat", e))?;
    if !meta.file_type().is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    Ok(meta)
}

/// Maps a non-empty file of `len` bytes with `map` and validates its header.
fn map_validated(
    path: &Path,
    len: u64,
    map: impl FnOnce() -> io::Result<MmapRaw>,
) -> Result<(MmapRaw, Capacities)> {
    if len < HEADER_SIZE as u64 {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            len,
            expected: HEADER_SIZE as u64,
        });
    }
    let map = map().map_err(|e| io_error(path, "mmap", e))?;
    // SAFETY: the mapping is at least HEADER_SIZE bytes long and page-aligned.
    let header = unsafe { &*map.as_ptr().cast::<Header>() };
    let caps = validate(path, header, len)?;
    Ok((map, caps))
}

/// Checks that the file belongs to this user and is not writable by all; returns its
/// identity (device and inode).
fn check_ownership(path: &Path, file: &File) -> Result<FileId> {
    let meta = regular_file(path, file)?;
    let euid = sys::geteuid();
    if meta.uid() != euid {
        return Err(Error::ForeignOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        });
    }
    if meta.mode() & 0o002 != 0 {
        return Err(Error::WorldWritable {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(FileId::of_metadata(&meta))
}

/// A file's identity: it names the same file as long as both numbers are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of_metadata(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The identity of the file at `path` itself (a symlink is not followed).
    pub(crate) fn of(path: &Path) -> io::Result<FileId> {
        fs::symlink_metadata(path).map(|meta| FileId::of_metadata(&meta))
    }
}

impl Region {
    /// Opens the registry at `path`, creating it with `caps` and `mode` if it does not
    /// exist. The whole opening runs under an exclusive `flock` of the file, so that
    /// concurrent openers serialise and no one sees a half-initialised region.
    pub(crate) fn open(
        path: &Path,
        caps: Capacities,
        mode: u32,
    ) -> Result<(Region, Opened, FileId)> {
        if let Some((name, value)) = caps.invalid() {
            return Err(Error::InvalidArgument {
                name,
                reason: format!(
                    "capacity {value} is outside 1..={}",
                    super::layout::MAX_CAPACITY
                ),
            });
        }
        let file = open_file(path, mode)?;
        let id = check_ownership(path, &file)?;
        sys::lock_file(file.as_fd()).map_err(|e| io_error(path, "flock", e))?;
        let outcome = Region::open_locked(path, &file, caps);
        // Closing the file would release the flock too; unlock explicitly so that the
        // error of the opening, not of the unlock, is the one reported.
        let _ = sys::unlock_file(file.as_fd());
        outcome.map(|(region, opened)| (region, opened, id))
    }
}

impl Region<ReadOnly> {
    /// Maps an existing registry read-only, for an observer: no creation, no `flock`,
    /// no ownership checks (reading another user's registry is what an operator
    /// does). Returns the region, whether it was last written in an earlier boot,
    /// and the identity of the file mapped.
    pub(crate) fn open_read_only(path: &Path) -> Result<(Region<ReadOnly>, bool, FileId)> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        let meta = regular_file(path, &file)?;
        let len = meta.len();
        // An empty file is one being created: not a registry yet.
        if len == 0 {
            return Err(Error::NotInitialised {
                path: path.to_path_buf(),
            });
        }
        let (map, caps) = map_validated(path, len, || MmapOptions::new().map_raw_read_only(&file))?;
        let region = Region::new(map, caps);
        let previous_boot = region.boot_changed().is_some();
        Ok((region, previous_boot, FileId::of_metadata(&meta)))
    }
}

impl<A> Region<A> {
    /// The kernel's boot id if the region was last written in another boot (every
    /// process it records is then gone); `None` if in this one, or if unknown.
    fn boot_changed(&self) -> Option<[u64; 2]> {
        let h = self.header();
        let file_boot = [h.boot_id[0].load(Acquire), h.boot_id[1].load(Acquire)];
        let now_boot = boot_id();
        (now_boot != [0, 0] && file_boot != now_boot).then_some(now_boot)
    }

    fn new(map: MmapRaw, caps: Capacities) -> Region<A> {
        Region {
            map: ManuallyDrop::new(map),
            keep_mapped: AtomicBool::new(false),
            caps,
            offsets: caps.offsets(),
            access: PhantomData,
        }
    }

    pub(crate) fn capacities(&self) -> Capacities {
        self.caps
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least `offsets.total` bytes (validated or created),
        // page-aligned, and a `Header` is valid for any bit pattern and only holds
        // atomics and a mutex (see `layout`).
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// # Panics
    ///
    /// If `i` is not below the capacity: callers iterate `0..capacity`.
    fn record<T>(&self, table: usize, count: u32, i: u32) -> &T {
        assert!(i < count, "record index {i} out of 0..{count}");
        let offset = table + i as usize * RECORD_SIZE;
        debug_assert!(offset + RECORD_SIZE <= self.offsets.total);
        // SAFETY: `offset + RECORD_SIZE` is within the mapping (checked against the
        // capacities, which were validated against the file length); records are
        // 128-byte aligned from a page-aligned base; every record type is valid for
        // any bit pattern and made only of atomics and mutexes (see `layout`).
        unsafe { &*self.map.as_ptr().add(offset).cast::<T>() }
    }

    pub(crate) fn generation(&self, i: u32) -> &GenerationRecord {
        self.record(self.offsets.generations, self.caps.generations, i)
    }

    pub(crate) fn slot(&self, i: u32) -> &WorkerSlot {
        self.record(self.offsets.workers, self.caps.workers, i)
    }

    pub(crate) fn event(&self, i: u32) -> &EventRecord {
        self.record(self.offsets.events, self.caps.events, i)
    }

    /// The crash history of worker index `i`.
    pub(crate) fn history(&self, i: u32) -> &CrashHistory {
        self.record(self.offsets.histories, self.caps.workers, i)
    }
}

impl Region<Writable> {
    /// The registry lock.
    pub(crate) fn lock(&self) -> &RawMutex {
        &self.header().lock
    }

    /// The mutex of slot `i`, held by its worker for its whole life.
    pub(crate) fn slot_mutex(&self, i: u32) -> &RawMutex {
        &self.slot(i).mutex
    }

    fn open_locked(path: &Path, file: &File, caps: Capacities) -> Result<(Region, Opened)> {
        let len = file
            .metadata()
            .map_err(|e| io_error(path, "fstat", e))?
            .len();
        if len == 0 {
            return Region::create(path, file, caps).map(|r| (r, Opened::Created));
        }
        let (map, caps) = map_validated(path, len, || MmapRaw::map_raw(file))?;
        let region = Region::new(map, caps);
        if let Some(now_boot) = region.boot_changed() {
            // SAFETY: no process of this boot uses the region yet: the first opener of
            // a boot resets it under the flock, which every opener holds while opening.
            unsafe { region.reset_mutexes()? };
            region.forget_crash_times();
            region.header().boot_id[0].store(now_boot[0], Release);
            region.header().boot_id[1].store(now_boot[1], Release);
            return Ok((region, Opened::ResetAfterReboot));
        }
        Ok((region, Opened::Existing))
    }

    fn create(path: &Path, file: &File, caps: Capacities) -> Result<Region> {
        let total = caps.offsets().total as u64;
        sys::reserve(file.as_fd(), total).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => Error::NoSpace {
                path: path.to_path_buf(),
                bytes: total,
            },
            _ => io_error(path, "posix_fallocate", e),
        })?;
        let map = MmapRaw::map_raw(file).map_err(|e| io_error(path, "mmap", e))?;
        let region = Region::new(map, caps);
        let h = region.header();
        h.layout_version.store(LAYOUT_VERSION, Relaxed);
        h.header_size.store(HEADER_SIZE as u32, Relaxed);
        h.record_size.store(RECORD_SIZE as u32, Relaxed);
        h.mutex_size.store(size_of::<RawMutex>() as u32, Relaxed);
        h.cap_generations.store(caps.generations, Relaxed);
        h.cap_workers.store(caps.workers, Relaxed);
        h.cap_events.store(caps.events, Relaxed);
        h.total_size.store(total, Relaxed);
        h.created_ns.store(clock::realtime_ns(), Relaxed);
        let boot = boot_id();
        h.boot_id[0].store(boot[0], Relaxed);
        h.boot_id[1].store(boot[1], Relaxed);
        h.next_generation.store(1, Relaxed);
        h.next_seq.store(1, Relaxed);
        // SAFETY: the file was empty and we hold its flock: nobody else maps it yet.
        unsafe { region.reset_mutexes()? };
        // Published last: a region without it is refused by `validate`.
        h.magic.store(MAGIC, Release);
        Ok(region)
    }

    /// Forgets the crash histories: their times are of the monotonic clock of a
    /// previous boot.
    fn forget_crash_times(&self) {
        let h = self.header();
        let end = h.history_high_water.load(Relaxed).min(self.caps.workers);
        for i in 0..end {
            let r = self.history(i);
            r.crashes.store(0, Relaxed);
            r.looping.store(0, Relaxed);
        }
        h.history_high_water.store(0, Relaxed);
    }

    /// Initialises the registry lock and every slot mutex, and forgets the lock holder.
    ///
    /// # Safety
    ///
    /// No thread of any process may be using any mutex of the region.
    unsafe fn reset_mutexes(&self) -> Result<()> {
        let h = self.header();
        // SAFETY: guaranteed by this function's contract.
        unsafe { h.lock.init()? };
        h.lock_holder_pid.store(0, Relaxed);
        h.lock_holder_op.store(0, Relaxed);
        for i in 0..self.caps.workers {
            // SAFETY: guaranteed by this function's contract.
            unsafe { self.slot(i).mutex.init()? };
        }
        Ok(())
    }

    /// Whether dropping the region leaves the mapping in place for the rest of the
    /// process's life.
    pub(crate) fn keep_mapped(&self, keep: bool) {
        self.keep_mapped.store(keep, Relaxed);
    }
}

impl<A> Drop for Region<A> {
    fn drop(&mut self) {
        if !self.keep_mapped.load(Relaxed) {
            // SAFETY: the map is dropped exactly once, here, and no reference into it
            // outlives `self`: records are only handed out borrowed from `&self`.
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
    }
}

/// Checks every header field before any other field is trusted.
fn validate(path: &Path, h: &Header, len: u64) -> Result<Capacities> {
    let path_buf = || -> PathBuf { path.to_path_buf() };
    let magic = h.magic.load(Acquire);
    if magic == 0 {
        return Err(Error::NotInitialised { path: path_buf() });
    }
    if magic != MAGIC {
        return Err(Error::ForeignMagic {
            path: path_buf(),
            magic,
        });
    }
    let found = h.layout_version.load(Relaxed);
    if found > LAYOUT_VERSION {
        return Err(Error::NewerLayout {
            path: path_buf(),
            found,
            supported: LAYOUT_VERSION,
        });
    }
    if found < LAYOUT_VERSION {
        return Err(Error::OlderLayout {
            path: path_buf(),
            found,
            supported: LAYOUT_VERSION,
        });
    }
    let incompatible = |what: String| Error::Incompatible {
        path: path_buf(),
        what,
    };
    for (name, found, expected) in [
        (
            "header size",
            h.header_size.load(Relaxed),
            HEADER_SIZE as u32,
        ),
        (
            "record size",
            h.record_size.load(Relaxed),
            RECORD_SIZE as u32,
        ),
        (
            "pthread mutex size",
            h.mutex_size.load(Relaxed),
            size_of::<RawMutex>() as u32,
        ),
    ] {
        if found != expected {
            return Err(incompatible(format!(
                "{name} is {found}, this build uses {expected} (written on another architecture or C library?)"
            )));
        }
    }
    let caps = Capacities {
        generations: h.cap_generations.load(Relaxed),
        workers: h.cap_workers.load(Relaxed),
        events: h.cap_events.load(Relaxed),
    };
    if let Some((name, value)) = caps.invalid() {
        return Err(incompatible(format!(
            "{name} capacity {value} is out of range"
        )));
    }
    let total = caps.offsets().total as u64;
    let recorded = h.total_size.load(Relaxed);
    if recorded != total {
        return Err(incompatible(format!(
            "header says {recorded} bytes, its capacities need {total}"
        )));
    }
    if len < total {
        return Err(Error::Truncated {
            path: path_buf(),
            len,
            expected: total,
        });
    }
    Ok(caps)
}
