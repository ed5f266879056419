//! The process-shared robust mutex. All `unsafe` pthread code of the crate lives here.
//!
//! The mutex lives in the shared mapping and is used by every process of the node.
//! It is `PTHREAD_PROCESS_SHARED` (the futex is keyed by the file page, not by a
//! process address), `PTHREAD_MUTEX_ROBUST` (when its owner dies, the kernel marks it
//! and the next locker learns it with `EOWNERDEAD` instead of waiting forever) and
//! `PTHREAD_MUTEX_ERRORCHECK` (relocking by the owner is an error, never a deadlock).
//!
//! Trust boundary: the mutex words are written by every process that maps the
//! registry, and glibc links a held robust mutex into the owner thread's robust list
//! through pointers stored inside it. A process that can write the registry can
//! therefore corrupt its peers; that is why the registry file must belong to the
//! user that runs the node and must not be world-writable (`region::map`).

use std::cell::UnsafeCell;
use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use crate::error::{pthread_result, Error, Result};

/// A `pthread_mutex_t` at a fixed place in the shared region.
#[repr(transparent)]
pub(crate) struct RawMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: a process-shared pthread mutex is made to be used concurrently from many
// threads and processes; all access goes through the pthread functions.
unsafe impl Sync for RawMutex {}

/// The outcome of a blocking lock.
#[must_use]
pub(crate) enum Locked<'m> {
    /// The mutex is held and the data it protects is consistent.
    Clean,
    /// The mutex is held, but its previous owner died holding it: the data may be
    /// half-updated. The mutex becomes usable again only through [`OwnerDied::repair`].
    OwnerDied(OwnerDied<'m>),
}

/// A blocking lock's outcome, and whether it had to wait.
pub(crate) struct Acquisition<'m> {
    pub locked: Locked<'m>,
    /// Monotonic nanoseconds when the wait began; `None` if the mutex was free.
    pub waited_since: Option<u64>,
}

/// A mutex whose previous owner died while holding it.
#[must_use = "the mutex stays unusable until repaired"]
pub(crate) struct OwnerDied<'m>(&'m RawMutex);

impl OwnerDied<'_> {
    /// Runs the repair of the protected data and, if it succeeds, marks the mutex
    /// consistent. The caller holds the mutex afterwards either way; unlocking it
    /// after a failed repair makes it permanently unusable (`ENOTRECOVERABLE`),
    /// which is right: the data it protects could not be mended.
    pub(crate) fn repair<T>(self, repair: impl FnOnce() -> Result<T>) -> Result<T> {
        let repaired = repair()?;
        // SAFETY: the mutex is initialised (see `RawMutex::init`) and held by this
        // thread in the owner-died state, which is what pthread_mutex_consistent needs.
        let code = unsafe { libc::pthread_mutex_consistent(self.0 .0.get()) };
        pthread_result("pthread_mutex_consistent", code)?;
        Ok(repaired)
    }
}

/// The outcome of a non-blocking lock attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryLocked {
    /// This thread now holds the mutex; nobody held it.
    Acquired,
    /// Another live thread holds it (or this one does).
    Busy,
    /// Its owner died holding it; this thread now holds it, marked consistent again.
    OwnerDied,
}

impl RawMutex {
    /// Initialises the mutex in place.
    ///
    /// # Safety
    ///
    /// No thread of any process may be using the mutex: it is being created, or
    /// reset under the registry's file lock after a reboot made its contents garbage.
    pub(crate) unsafe fn init(&self) -> Result<()> {
        let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is valid for writes; it is destroyed below on every path
        // after a successful init.
        unsafe {
            pthread_result(
                "pthread_mutexattr_init",
                libc::pthread_mutexattr_init(attr.as_mut_ptr()),
            )?;
        }
        let attr_ptr = attr.as_mut_ptr();
        // SAFETY: `attr_ptr` points to an initialised attribute object; the mutex
        // memory is valid and, by this function's contract, unused.
        let outcome = unsafe {
            pthread_result(
                "pthread_mutexattr_setpshared",
                libc::pthread_mutexattr_setpshared(attr_ptr, libc::PTHREAD_PROCESS_SHARED),
            )
            .and_then(|()| {
                pthread_result(
                    "pthread_mutexattr_setrobust",
                    libc::pthread_mutexattr_setrobust(attr_ptr, libc::PTHREAD_MUTEX_ROBUST),
                )
            })
            .and_then(|()| {
                pthread_result(
                    "pthread_mutexattr_settype",
                    libc::pthread_mutexattr_settype(attr_ptr, libc::PTHREAD_MUTEX_ERRORCHECK),
                )
            })
            .and_then(|()| {
                pthread_result(
                    "pthread_mutex_init",
                    libc::pthread_mutex_init(self.0.get(), attr_ptr),
                )
            })
        };
        // SAFETY: the attribute object was initialised above and is not used again.
        unsafe { libc::pthread_mutexattr_destroy(attr_ptr) };
        outcome
    }

    /// Waits at most `timeout` for the mutex, sleeping in the kernel (never spinning).
    /// Relocking by the owner thread is `EDEADLK`, reported as an `Os` error.
    pub(crate) fn lock(&self, timeout: Duration) -> Result<Acquisition<'_>, LockFailure> {
        // SAFETY: the mutex was initialised by `init` when the region was created or
        // reset. The uncontended case needs no deadline, hence no clock read.
        let code = unsafe { libc::pthread_mutex_trylock(self.0.get()) };
        if code != libc::EBUSY {
            return self.locked(code).map(|locked| Acquisition {
                locked,
                waited_since: None,
            });
        }
        let started = crate::clock::monotonic_ns();
        let deadline = realtime_deadline(timeout);
        // SAFETY: as above, and `deadline` is a valid timespec.
        let code = unsafe { libc::pthread_mutex_timedlock(self.0.get(), &deadline) };
        self.locked(code).map(|locked| Acquisition {
            locked,
            waited_since: Some(started),
        })
    }

    /// Takes the mutex if it is free, without waiting: `None` when another thread
    /// holds it. A user-space compare-and-swap, no system call.
    pub(crate) fn lock_now(&self) -> Result<Option<Locked<'_>>, LockFailure> {
        // SAFETY: the mutex was initialised by `init` when the region was created or
        // reset.
        let code = unsafe { libc::pthread_mutex_trylock(self.0.get()) };
        if code == libc::EBUSY {
            return Ok(None);
        }
        self.locked(code).map(Some)
    }

    fn locked(&self, code: libc::c_int) -> Result<Locked<'_>, LockFailure> {
        match code {
            0 => Ok(Locked::Clean),
            libc::EOWNERDEAD => Ok(Locked::OwnerDied(OwnerDied(self))),
            libc::ETIMEDOUT => Err(LockFailure::Timeout),
            libc::ENOTRECOVERABLE => Err(LockFailure::NotRecoverable),
            code => Err(LockFailure::Os(io::Error::from_raw_os_error(code))),
        }
    }

    /// Tries the mutex without waiting: a user-space compare-and-swap, no system call.
    /// An owner-died mutex is taken and marked consistent at once, since the caller
    /// only wants to learn that the owner is gone.
    pub(crate) fn try_lock(&self) -> Result<TryLocked> {
        // SAFETY: the mutex was initialised by `init`.
        let code = unsafe { libc::pthread_mutex_trylock(self.0.get()) };
        match code {
            0 => Ok(TryLocked::Acquired),
            libc::EBUSY | libc::EDEADLK => Ok(TryLocked::Busy),
            libc::EOWNERDEAD => {
                // SAFETY: this thread holds the mutex in the owner-died state.
                let code = unsafe { libc::pthread_mutex_consistent(self.0.get()) };
                pthread_result("pthread_mutex_consistent", code)?;
                Ok(TryLocked::OwnerDied)
            }
            code => pthread_result("pthread_mutex_trylock", code).map(|()| TryLocked::Busy),
        }
    }

    /// Releases the mutex held by this thread.
    pub(crate) fn unlock(&self) -> Result<()> {
        // SAFETY: the mutex was initialised by `init`; an unlock by a thread that does
        // not own it is reported (EPERM) by the error-checking type, not undefined.
        let code = unsafe { libc::pthread_mutex_unlock(self.0.get()) };
        pthread_result("pthread_mutex_unlock", code)
    }
}

/// Why a blocking lock failed.
#[derive(Debug)]
pub(crate) enum LockFailure {
    Timeout,
    NotRecoverable,
    Os(io::Error),
}

impl LockFailure {
    pub(crate) fn into_error(
        self,
        timeout: Duration,
        holder_pid: u32,
        holder_op: &'static str,
    ) -> Error {
        match self {
            LockFailure::Timeout => Error::LockTimeout {
                timeout,
                holder_pid,
                holder_op,
            },
            LockFailure::NotRecoverable => Error::LockNotRecoverable,
            LockFailure::Os(source) => Error::Os {
                call: "pthread_mutex_timedlock",
                source,
            },
        }
    }
}

/// `pthread_mutex_timedlock` takes an absolute `CLOCK_REALTIME` deadline.
fn realtime_deadline(timeout: Duration) -> libc::timespec {
    let now = crate::clock::realtime();
    let deadline = now.saturating_add(timeout);
    libc::timespec {
        tv_sec: deadline.as_secs() as libc::time_t,
        tv_nsec: deadline.subsec_nanos() as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_mutex() -> Box<RawMutex> {
        // SAFETY: an all-zero pthread_mutex_t is a valid (if default) bit pattern; it is
        // initialised right after.
        let mutex: Box<RawMutex> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: nobody else can see the freshly allocated mutex.
        unsafe { mutex.init().unwrap() };
        mutex
    }

    #[test]
    fn lock_unlock_and_relock_is_refused() {
        let m = new_mutex();
        assert!(matches!(
            m.lock(Duration::from_millis(10)).map(|a| a.locked),
            Ok(Locked::Clean)
        ));
        assert!(matches!(
            m.lock(Duration::from_millis(10)),
            Err(LockFailure::Os(e)) if e.raw_os_error() == Some(libc::EDEADLK)
        ));
        assert_eq!(m.try_lock().unwrap(), TryLocked::Busy);
        m.unlock().unwrap();
        assert!(
            m.unlock().is_err(),
            "unlocking an unheld error-checking mutex fails"
        );
    }

    #[test]
    fn a_thread_that_dies_holding_it_is_reported() {
        let m: &'static RawMutex = Box::leak(new_mutex());
        std::thread::spawn(move || assert_eq!(m.try_lock().unwrap(), TryLocked::Acquired))
            .join()
            .unwrap();
        match m.lock(Duration::from_secs(1)).map(|a| a.locked) {
            Ok(Locked::OwnerDied(od)) => assert_eq!(od.repair(|| Ok(7)).unwrap(), 7),
            _ => panic!("expected owner died"),
        }
        m.unlock().unwrap();
        assert!(matches!(
            m.lock(Duration::from_millis(10)).map(|a| a.locked),
            Ok(Locked::Clean)
        ));
        m.unlock().unwrap();
    }

    #[test]
    fn a_held_mutex_times_out() {
        let m: &'static RawMutex = Box::leak(new_mutex());
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            assert!(matches!(
                m.lock(Duration::from_secs(1)).map(|a| a.locked),
                Ok(Locked::Clean)
            ));
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
            m.unlock().unwrap();
        });
        rx.recv().unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            m.lock(Duration::from_millis(20)).map(|a| a.waited_since),
            Err(LockFailure::Timeout)
        ));
        assert!(started.elapsed() >= Duration::from_millis(20));
        done_tx.send(()).unwrap();
        holder.join().unwrap();
    }
}
