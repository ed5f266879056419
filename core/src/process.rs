//! Process identity: a pid and the process's start time, so that a recycled pid is
//! never taken for the process that used it before.

use std::fs;
use std::sync::Mutex;

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

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: u8,
    start_time: u64,
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
    let state = *fields.next()?.as_bytes().first()?;
    // `state` is field 3; `starttime` is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
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
            Some(stat) => {
                !matches!(stat.state, b'Z' | b'X')
                    && (self.start_time == 0 || stat.start_time == self.start_time)
            }
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
}
