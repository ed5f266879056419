//! Process identity: a pid and the process's start time, so that a recycled pid is
//! never taken for the process that used it before, and never signalled in its
//! place.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::sys;

/// A process as the registry remembers it.
///
/// The start time has the resolution of a clock tick (10 ms on Linux): a pid reused
/// within the same tick would be taken for the old process, which needs the whole pid
/// space to be cycled through in 10 ms and does not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`); 0 when
    /// it could not be read.
    pub start_time: u64,
}

/// The signals an operator sends an nginx master, by what nginx does with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// Reload the configuration.
    Hup,
    /// Binary upgrade: start a new master from the binary on disk.
    Usr2,
    /// Stop the workers gracefully, keep the master.
    Winch,
    /// Graceful stop.
    Quit,
    /// Fast stop.
    Term,
}

impl Signal {
    /// The signal's number.
    pub fn number(self) -> libc::c_int {
        match self {
            Signal::Hup => libc::SIGHUP,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Winch => libc::SIGWINCH,
            Signal::Quit => libc::SIGQUIT,
            Signal::Term => libc::SIGTERM,
        }
    }

    /// Its name: `SIGHUP`, ...
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Usr2 => "SIGUSR2",
            Signal::Winch => "SIGWINCH",
            Signal::Quit => "SIGQUIT",
            Signal::Term => "SIGTERM",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: u8,
    ppid: u32,
    start_time: u64,
}

impl Stat {
    /// Whether this is the process `id` names, alive: not a zombie, and started when
    /// `id` says (an identity without a start time matches any).
    fn is(&self, id: &Identity) -> bool {
        !matches!(self.state, b'Z' | b'X')
            && (id.start_time == 0 || self.start_time == id.start_time)
    }
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the fields after the command name, which is in parentheses and may itself
/// contain spaces and parentheses: the last `)` ends it.
fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // `state` is field 3, `ppid` field 4, `starttime` field 22.
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        start_time,
    })
}

impl Identity {
    /// The identity of a live process, or `None` if it does not exist.
    pub fn of(pid: u32) -> Option<Identity> {
        let stat = read_stat(pid)?;
        Some(Identity {
            pid,
            start_time: stat.start_time,
        })
    }

    /// The calling process. Its start time is read from `/proc` once per process (a
    /// `fork` child reads its own): it cannot change.
    pub fn current() -> Identity {
        static CACHE: Mutex<Option<Identity>> = Mutex::new(None);
        let pid = sys::getpid();
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *cache {
            Some(me) if me.pid == pid => me,
            _ => {
                let me = Identity::of(pid).unwrap_or(Identity { pid, start_time: 0 });
                *cache = Some(me);
                me
            }
        }
    }

    /// Whether this very process is still alive: the pid exists (`kill(pid, 0)`
    /// succeeds or fails with EPERM), it is not a zombie, and it started when this
    /// identity says (a different start time means the pid was recycled).
    #[must_use = "is_alive only reads /proc; it checks nothing by itself"]
    pub fn is_alive(&self) -> bool {
        if !sys::pid_exists(self.pid) {
            return false;
        }
        match read_stat(self.pid) {
            // Exists for kill, but /proc hides it (hidepid): trust kill.
            None => sys::pid_exists(self.pid),
            Some(stat) => stat.is(self),
        }
    }

    /// The parent of this very process, while it lives; `None` once it is gone (or
    /// its pid was reused).
    pub fn parent(&self) -> Option<u32> {
        read_stat(self.pid)
            .filter(|stat| stat.is(self))
            .map(|stat| stat.ppid)
    }

    /// Whether this very process has a handler for `signal` (`SigCgt` in
    /// `/proc/<pid>/status`); false once it is gone. nginx installs its handlers
    /// only once its configuration is loaded: before that, and as it exits after
    /// giving a configuration up, a signal has its default action (SIGQUIT dumps
    /// core).
    pub fn handles(&self, signal: Signal) -> bool {
        let Ok(status) = fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        let caught = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
        // Read after the status: the process it describes is this one.
        let mine = read_stat(self.pid).is_some_and(|stat| stat.is(self));
        mine && caught.is_some_and(|mask| mask & (1 << (signal.number() - 1)) != 0)
    }

    /// Sends `signal` to this very process, never to another that reuses its pid.
    ///
    /// The process is pinned with a pidfd before its start time is compared with
    /// this identity's, and the signal goes through the pidfd: should the process
    /// exit and its pid be reused between the check and the sending, the signal goes
    /// nowhere rather than to the newcomer.
    ///
    /// # Errors
    ///
    /// - [`Error::ProcessGone`] when the process has exited (or is a zombie), or its
    ///   pid belongs to a process started at another time: nothing is sent;
    /// - [`Error::InvalidArgument`] for an identity without a start time, which
    ///   cannot be checked;
    /// - [`Error::Signal`] when the kernel refuses (`EPERM`: the caller may not
    ///   signal that process; `ENOSYS`: no pidfds before Linux 5.3).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let gone = || Error::ProcessGone {
            pid: self.pid,
            signal: signal.name(),
        };
        let refused = |source: io::Error| {
            let source = if source.raw_os_error() == Some(libc::ENOSYS) {
                io::Error::new(
                    source.kind(),
                    "this kernel has no pidfds (Linux 5.3 or newer is needed)",
                )
            } else {
                source
            };
            Error::Signal {
                pid: self.pid,
                signal: signal.name(),
                source,
            }
        };
        if self.start_time == 0 {
            return Err(Error::InvalidArgument {
                name: "identity",
                reason: format!(
                    "process {} has no recorded start time, so whether it is still that process cannot be checked: {} not sent",
                    self.pid,
                    signal.name()
                ),
            });
        }
        let pidfd = match sys::pidfd_open(self.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(gone()),
            Err(e) => return Err(refused(e)),
        };
        // The pidfd now holds whichever process had the pid; it is this identity's
        // only if that process started when the identity says.
        if !read_stat(self.pid).is_some_and(|stat| stat.is(self)) {
            return Err(gone());
        }
        match sys::pidfd_send_signal(pidfd.as_fd(), signal.number()) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(gone()),
            Err(e) => Err(refused(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_name_with_spaces_and_parentheses() {
        let line =
            b"42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: b'S',
                ppid: 1,
                start_time: 123456
            })
        );
        assert_eq!(parse_stat(b"garbage"), None);
        assert_eq!(parse_stat(b"1 (x) R 1 2"), None);
    }

    #[test]
    fn the_current_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Identity::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let recycled = Identity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive());
    }

    #[test]
    fn a_reaped_child_is_dead_and_a_zombie_is_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = Identity::of(child.id()).unwrap();
        assert!(id.is_alive());
        child.kill().unwrap();
        // Not yet reaped: a zombie.
        while read_stat(id.pid).map(|s| s.state) != Some(b'Z') {
            std::thread::yield_now();
        }
        assert!(!id.is_alive(), "a zombie is dead");
        child.wait().unwrap();
        assert!(!id.is_alive());
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
    }

    /// The signal that ended `child`, which must end.
    fn killed_by(child: &mut std::process::Child) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        child.wait().unwrap().signal()
    }

    #[test]
    fn a_signal_reaches_the_process_its_identity_names() {
        for signal in [Signal::Hup, Signal::Usr2, Signal::Term] {
            let mut child = sleeper();
            let id = Identity::of(child.id()).unwrap();
            id.signal(signal).unwrap();
            assert_eq!(killed_by(&mut child), Some(signal.number()), "{signal}");
        }
    }

    #[test]
    fn a_recycled_pid_is_not_signalled() {
        let mut child = sleeper();
        let id = Identity::of(child.id()).unwrap();
        let recycled = Identity {
            start_time: id.start_time + 1,
            ..id
        };
        match recycled.signal(Signal::Hup) {
            Err(Error::ProcessGone { pid, signal }) => {
                assert_eq!((pid, signal), (id.pid, "SIGHUP"));
            }
            other => panic!("{other:?}"),
        }
        // Had the SIGHUP been sent, it would have ended the child first.
        id.signal(Signal::Term).unwrap();
        assert_eq!(killed_by(&mut child), Some(libc::SIGTERM));
    }

    #[test]
    fn a_zombie_and_a_reaped_process_are_not_signalled() {
        let mut child = sleeper();
        let id = Identity::of(child.id()).unwrap();
        child.kill().unwrap();
        while read_stat(id.pid).map(|s| s.state) != Some(b'Z') {
            std::thread::yield_now();
        }
        assert!(matches!(
            id.signal(Signal::Term),
            Err(Error::ProcessGone { .. })
        ));
        child.wait().unwrap();
        assert!(matches!(
            id.signal(Signal::Term),
            Err(Error::ProcessGone { .. })
        ));
    }

    #[test]
    fn an_identity_without_a_start_time_is_not_signalled() {
        let mut child = sleeper();
        let unknown = Identity {
            pid: child.id(),
            start_time: 0,
        };
        assert!(matches!(
            unknown.signal(Signal::Hup),
            Err(Error::InvalidArgument { .. })
        ));
        Identity::of(child.id())
            .unwrap()
            .signal(Signal::Term)
            .unwrap();
        assert_eq!(killed_by(&mut child), Some(libc::SIGTERM));
    }

    #[test]
    fn a_handler_is_seen_once_installed() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap 'exit 0' USR2; while :; do sleep 0.05; done"])
            .spawn()
            .unwrap();
        let id = Identity::of(child.id()).unwrap();
        assert!(!id.handles(Signal::Quit));
        // The shell installs its trap a moment after it starts.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !id.handles(Signal::Usr2) {
            assert!(std::time::Instant::now() < deadline, "no USR2 handler");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let recycled = Identity {
            start_time: id.start_time + 1,
            ..id
        };
        assert!(!recycled.handles(Signal::Usr2));
        id.signal(Signal::Usr2).unwrap();
        assert!(child.wait().unwrap().success(), "its handler ran");
        assert!(!id.handles(Signal::Usr2));
    }

    #[test]
    fn a_child_s_parent_is_this_process_while_it_lives() {
        let mut child = sleeper();
        let id = Identity::of(child.id()).unwrap();
        assert_eq!(id.parent(), Some(std::process::id()));
        let recycled = Identity {
            start_time: id.start_time + 1,
            ..id
        };
        assert_eq!(recycled.parent(), None);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(id.parent(), None);
    }
}
