//! The change sequence: a sequence lock over everything writers change under the
//! registry lock, so that readers outside the lock (the CLI, metrics) get consistent
//! copies without ever waiting on it; and the futex word that journal readers sleep
//! on. See `docs/design.md` 7.2 and 7.3.

use std::sync::atomic::fence;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use crate::region::layout::Header;
use crate::sys;

/// How long a reader waits for a writer to finish its change before it settles for
/// a copy marked inconsistent, when the writer (the lock holder) is gone: it died in
/// the middle of the change.
pub const OBSERVE_PATIENCE: Duration = Duration::from_millis(50);

/// How long a reader waits for a writer that is alive. A change takes microseconds,
/// but a live writer may be descheduled in the middle of one on a loaded machine, or
/// run slowly under a debugger or valgrind.
pub const LIVE_WRITER_PATIENCE: Duration = Duration::from_secs(2);

/// An operation's changes, in progress until dropped. The caller holds the registry
/// lock; changes do not nest.
pub(crate) struct Change<'h> {
    header: &'h Header,
    /// `change_seq` while the change is open (odd).
    open: u32,
    /// The journal's head when the change began.
    next_seq: u64,
}

impl<'h> Change<'h> {
    pub(crate) fn begin(header: &'h Header) -> Change<'h> {
        // Odd already: the previous writer died in the middle of a change; this one
        // takes it over and ends it.
        let open = header.change_seq.load(Relaxed) | 1;
        header.change_seq.store(open, Relaxed);
        fence(Release);
        Change {
            header,
            open,
            next_seq: header.next_seq.load(Relaxed),
        }
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        let h = self.header;
        h.change_seq.store(self.open.wrapping_add(1), Release);
        if h.next_seq.load(Relaxed) != self.next_seq {
            sys::futex_wake(&h.change_seq);
        }
    }
}

/// Runs `copy` until it ran while no change was in progress, for at most
/// [`OBSERVE_PATIENCE`], or [`LIVE_WRITER_PATIENCE`] while the lock holder lives.
/// Returns the copy and whether it is consistent.
pub(crate) fn read<T>(header: &Header, mut copy: impl FnMut() -> T) -> (T, bool) {
    let seq = &header.change_seq;
    let started = Instant::now();
    let mut deadline = started + OBSERVE_PATIENCE;
    let mut attempt = 0u32;
    loop {
        let before = seq.load(Acquire);
        let value = copy();
        fence(Acquire);
        let consistent = before % 2 == 0 && seq.load(Relaxed) == before;
        if consistent {
            return (value, true);
        }
        if Instant::now() >= deadline {
            let patient = started + LIVE_WRITER_PATIENCE;
            if deadline == patient || !sys::pid_exists(header.lock_holder_pid.load(Relaxed)) {
                return (value, false);
            }
            deadline = patient;
        }
        attempt += 1;
        if attempt < 8 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Sleeps until the journal holds entry `seq` (its `next_seq` exceeds it), or
/// `timeout` passes. Returns whether it does.
pub(crate) fn wait_for_event(header: &Header, seq: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // Loaded before the check: a change that ends between the check and the
        // sleep moves the word, and the futex returns at once.
        let word = header.change_seq.load(Acquire);
        if header.next_seq.load(Acquire) > seq {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        sys::futex_wait(&header.change_seq, word, deadline - now);
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    fn header() -> Box<Header> {
        // SAFETY: a header holds only atomics and a mutex, for which zero bytes are a
        // valid (unlocked) value.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    /// A pid that names no process: a child that ran and was reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    #[test]
    fn a_change_left_open_is_given_up_on_soon_if_its_writer_died() {
        let h = header();
        h.change_seq.store(1, Relaxed);
        h.lock_holder_pid.store(dead_pid(), Relaxed);
        let started = Instant::now();
        let ((), consistent) = read(&h, || ());
        assert!(!consistent);
        assert!(started.elapsed() >= OBSERVE_PATIENCE);
        assert!(started.elapsed() < LIVE_WRITER_PATIENCE);
    }

    #[test]
    fn a_live_writer_is_waited_for_longer() {
        let h = header();
        h.change_seq.store(1, Relaxed);
        h.lock_holder_pid.store(std::process::id(), Relaxed);
        let started = Instant::now();
        let ((), consistent) = read(&h, || ());
        assert!(!consistent);
        assert!(started.elapsed() >= LIVE_WRITER_PATIENCE);

        // A slow writer that ends its change after the short patience.
        let ((), consistent) = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(OBSERVE_PATIENCE * 4);
                h.change_seq.store(2, Release);
            });
            read(&h, || ())
        });
        assert!(consistent);
    }
}
