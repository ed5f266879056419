//! nginx's error log, read from where it stood before a signal: the lines nginx
//! writes about a configuration it loads. A configuration nginx rejects before
//! `init_by_lua` (a syntax error) leaves no trace in the registry, only an `[emerg]`
//! line here.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// nginx's log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Emerg,
    Alert,
    Crit,
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

impl Level {
    fn parse(name: &str) -> Option<Level> {
        Some(match name {
            "emerg" => Level::Emerg,
            "alert" => Level::Alert,
            "crit" => Level::Crit,
            "error" => Level::Error,
            "warn" => Level::Warn,
            "notice" => Level::Notice,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

/// A line of the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub level: Level,
    /// The process that wrote it; `None` for what nginx writes to its stderr before
    /// its log is set up (`nginx: [emerg] ...`, as a new binary does while it reads
    /// its configuration).
    pub pid: Option<u32>,
    pub text: String,
}

impl Line {
    /// Reads `2026/11/24 10:00:00 [emerg] 1234#1234: message` and
    /// `nginx: [emerg] message`; `None` for anything else (a continuation of a
    /// multi-line message, another program's output).
    pub fn parse(text: &str) -> Option<Line> {
        let (rest, stamped) = match text.strip_prefix("nginx: [") {
            Some(rest) => (rest, false),
            None => {
                // The date and the time, then the level.
                let mut parts = text.splitn(3, ' ');
                let (_date, _time) = (parts.next()?, parts.next()?);
                (parts.next()?.strip_prefix('[')?, true)
            }
        };
        let (name, after) = rest.split_once(']')?;
        let level = Level::parse(name)?;
        // A stamped line goes on with `<pid>#<thread>: `.
        let pid = if stamped {
            Some(after.trim_start().split_once('#')?.0.parse().ok()?)
        } else {
            None
        };
        Some(Line {
            level,
            pid,
            text: text.to_string(),
        })
    }

    /// An `[emerg]`, `[alert]`, `[crit]`, `[error]` or `[warn]` line: what an
    /// operator is shown.
    pub fn is_worth_showing(&self) -> bool {
        self.level <= Level::Warn
    }

    /// What it says, after the level and the pid.
    pub fn message(&self) -> &str {
        let after_level = self.text.split_once("] ").map_or("", |(_, rest)| rest);
        match self.pid {
            // `<pid>#<thread>: `
            Some(_) => after_level.split_once(": ").map_or(after_level, |(_, m)| m),
            None => after_level,
        }
    }

    /// Whether this is the copy nginx writes to its stderr of `previous`, a line of
    /// its log: a process whose log is not set up yet writes both, and the log may
    /// be its stderr.
    pub fn echoes(&self, previous: &Line) -> bool {
        self.pid.is_none()
            && previous.pid.is_some()
            && self.level == previous.level
            && self.message() == previous.message()
    }

    /// Whether `pid` wrote it, or nginx's stderr did (no pid).
    pub fn is_from(&self, pid: u32) -> bool {
        self.pid.map_or(true, |p| p == pid)
    }
}

/// At most this many lines are kept: a reload's own lines are a few.
const KEEP: usize = 1000;

/// The error log from a given offset on.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: File,
    offset: u64,
    /// The start of a line not yet ended.
    partial: Vec<u8>,
    /// The lines read so far that say something (see [`Tail::lines`]).
    lines: Vec<Line>,
}

impl Tail {
    /// Opens the log at `path` and starts at its end.
    pub fn open(path: &Path) -> io::Result<Tail> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Tail {
            path: path.to_path_buf(),
            file,
            offset: meta.len(),
            partial: Vec::new(),
            lines: Vec::new(),
        })
    }

    /// The file a process's stderr is, if it is a regular file: where nginx keeps its
    /// error log, as it `dup2()`s the log onto the master's descriptor 2.
    pub fn of_stderr(pid: u32) -> Option<PathBuf> {
        let path = fs::read_link(format!("/proc/{pid}/fd/2")).ok()?;
        fs::metadata(&path)
            .is_ok_and(|m| m.is_file())
            .then_some(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was written since the last call; returns how many lines were
    /// kept. A file that shrank was truncated or replaced by a rotation: read again
    /// from its start.
    pub fn read(&mut self) -> usize {
        let before = self.lines.len();
        let len = self.file.metadata().map_or(self.offset, |m| m.len());
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return 0;
        }
        let mut chunk = Vec::new();
        if self.file.seek(SeekFrom::Start(self.offset)).is_err()
            || (&mut self.file)
                .take(len - self.offset)
                .read_to_end(&mut chunk)
                .is_err()
        {
            return 0;
        }
        self.offset += chunk.len() as u64;
        self.partial.extend_from_slice(&chunk);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return 0;
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        for text in String::from_utf8_lossy(&whole).lines() {
            if let Some(line) = Line::parse(text) {
                if line.level <= Level::Notice && self.lines.len() < KEEP {
                    self.lines.push(line);
                }
            }
        }
        self.lines.len() - before
    }

    /// The lines read so far at level `notice` or more severe.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_nginx_s_two_formats() {
        let line = Line::parse(
            "2026/11/24 10:00:00 [emerg] 1234#1234: unknown directive \"x\" in /p/nginx.conf:3",
        )
        .unwrap();
        assert_eq!((line.level, line.pid), (Level::Emerg, Some(1234)));
        assert!(line.is_worth_showing() && line.is_from(1234) && !line.is_from(1));
        let line =
            Line::parse("nginx: [emerg] unknown directive \"x\" in /p/nginx.conf:3").unwrap();
        assert_eq!((line.level, line.pid), (Level::Emerg, None));
        assert!(line.is_from(1));
        let line =
            Line::parse("2026/11/24 10:00:00 [notice] 99#99: signal process started").unwrap();
        assert_eq!(line.level, Level::Notice);
        assert!(!line.is_worth_showing());
        assert_eq!(Line::parse("stack traceback:"), None);
        let logged =
            Line::parse("2026/11/24 10:00:00 [emerg] 7#7: still could not bind()").unwrap();
        let echoed = Line::parse("nginx: [emerg] still could not bind()").unwrap();
        assert_eq!(logged.message(), "still could not bind()");
        assert_eq!(echoed.message(), "still could not bind()");
        assert!(echoed.echoes(&logged) && !logged.echoes(&echoed));
        assert_eq!(Line::parse("2026/11/24 10:00:00 [loud] 1#1: x"), None);
        assert_eq!(Line::parse(""), None);
    }

    #[test]
    fn a_tail_reads_whole_lines_written_after_it_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("error.log");
        fs::write(&path, "2026/11/24 10:00:00 [emerg] 1#1: before\n").unwrap();
        let mut tail = Tail::open(&path).unwrap();
        let mut log = fs::OpenOptions::new().append(true).open(&path).unwrap();
        write!(
            log,
            "2026/11/24 10:00:01 [error] 2#2: after\n2026/11/24 10:00:01 [warn] 2#2: half"
        )
        .unwrap();
        assert_eq!(tail.read(), 1);
        writeln!(log, " a line\n2026/11/24 10:00:02 [debug] 2#2: quiet").unwrap();
        assert_eq!(tail.read(), 1);
        let texts: Vec<&str> = tail.lines().iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "2026/11/24 10:00:01 [error] 2#2: after",
                "2026/11/24 10:00:01 [warn] 2#2: half a line"
            ]
        );
        // Rotated: truncated, written again.
        fs::write(&path, "2026/11/24 10:00:03 [alert] 3#3: new\n").unwrap();
        assert_eq!(tail.read(), 1);
        assert_eq!(tail.lines()[2].pid, Some(3));
    }

    #[test]
    fn stderr_is_a_log_only_when_it_is_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr.log");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stderr(File::create(&path).unwrap())
            .spawn()
            .unwrap();
        assert_eq!(Tail::of_stderr(child.id()), Some(path));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(Tail::of_stderr(child.id()), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
