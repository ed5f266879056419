//! A real nginx (Debian's, with the real Lua module) in a temporary prefix, driven
//! with real signals. Callbacks of the test configuration append one JSON object per
//! event to `events.log` in the prefix, which the harness reads back into typed
//! events; tests wait for the events they expect.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tempfile::TempDir;
use worker_manager::{Detail, Event, EventKind, ExitReason, RunEnd, StartKind};

use super::STEP_TIMEOUT;

#[path = "../../src/json.rs"]
pub mod json;

use json::Named;

pub const NGINX: &str = "/usr/sbin/nginx";

/// One line of `events.log`: what a callback was handed, and who ran it when.
#[derive(Debug, Clone)]
pub struct Ev {
    /// What `WM_RECORD` was made with: the name of the event whose callback this is,
    /// or a test's own label (`crash_done`).
    pub name: String,
    /// The process that ran the callback.
    pub by: u32,
    /// Wall-clock nanoseconds when the callback ran.
    pub t: u64,
    /// The rest of the record as written: the callback's `id` and counts, and the
    /// keys of its `info`.
    pub fields: Map<String, Value>,
    /// The same, read as this library's event once; an error for a record that is
    /// not one (the benchmarks record the original library's callbacks too).
    event: Result<Event, String>,
}

impl Ev {
    /// The library's event the callback was handed; fails for a record that is not
    /// one.
    pub fn event(&self) -> &Event {
        self.event
            .as_ref()
            .unwrap_or_else(|e| panic!("the {} record is not an event: {e}", self.name))
    }

    /// Whether the callback of `kind` recorded it.
    pub fn is(&self, kind: EventKind) -> bool {
        self.name == kind.as_str()
    }

    pub fn generation(&self) -> u64 {
        self.event().generation
    }

    /// The pid of the worker it is about.
    pub fn pid(&self) -> Option<u32> {
        self.event().worker().map(|w| w.pid)
    }

    /// The reason of a `worker_exit` or `master_exit`.
    pub fn reason(&self) -> ExitReason {
        json::reason(self.event())
    }

    /// Why a `master_start`'s generation started, and how the run before ended.
    pub fn started(&self) -> (StartKind, Option<RunEnd>) {
        match self.event().detail {
            Detail::MasterStart {
                kind, previous_run, ..
            } => (kind, previous_run),
            _ => panic!("not a master_start: {}", self.event()),
        }
    }

    /// A string of the record as written, "" if it has none: for what is not this
    /// library's event (another tracker's callbacks, in the benchmarks).
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).and_then(Value::as_str).unwrap_or("")
    }

    /// A number of the record as written, as `get`.
    pub fn num(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }
}

/// A line of `events.log`: the callback's `info` and arguments, in the schema of
/// `json.rs` when this library ran it, with the record's own keys `callback`, `by`
/// and `t` (a string: a double would round the nanoseconds).
fn parse(line: &str) -> Result<Ev, String> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str(line) else {
        return Err("not a JSON object".into());
    };
    let mut take = |key: &str| fields.remove(key).ok_or_else(|| format!("no {key:?}"));
    let name = take("callback")?
        .as_str()
        .ok_or("\"callback\" is not a string")?
        .to_string();
    let by = take("by")?
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
        .ok_or("\"by\" is not a pid")?;
    let t = take("t")?
        .as_str()
        .and_then(|t| t.parse().ok())
        .ok_or("\"t\" is not a count of nanoseconds")?;
    let event =
        json::from_json(Value::Object(fields.clone())).and_then(
            |event| match EventKind::from_name(&name) {
                Some(kind) if kind != event.kind() => {
                    Err(format!("the {name} callback was handed {event}"))
                }
                _ => Ok(event),
            },
        );
    Ok(Ev {
        name,
        by,
        t,
        fields,
        event,
    })
}

/// What goes into the test configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: u32,
    pub daemon: bool,
    /// Lua table fields added to the `on_init_by_lua` options.
    pub opts: String,
    /// `interval = 0.2, failed = 1` rather than the defaults (10 s, 5 s).
    pub short_intervals: bool,
    /// `exit_worker_by_lua` calls `on_exit_worker_by_lua()`.
    pub exit_hook: bool,
    /// Lua code run at the start of every callback (`name` and `info` in scope).
    pub in_callback: String,
    /// Lua code run at the start of `init_worker_by_lua`, before the registration.
    pub before_worker: String,
    /// Extra `http` block lines.
    pub http: String,
    /// Extra lines of the test server's block (locations).
    pub locations: String,
    /// The whole `init_by_lua_block`/`init_worker_by_lua_block` pair, replacing the
    /// standard ones (for configurations written the original's way).
    pub lua_blocks: Option<String>,
    /// `lua_package_path` and `lua_package_cpath`, as written, in place of the
    /// repository's `lib/` and the library these tests built (then LuaJIT's defaults).
    pub lua_paths: Option<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 2,
            daemon: false,
            opts: String::new(),
            short_intervals: true,
            exit_hook: true,
            in_callback: String::new(),
            before_worker: String::new(),
            http: String::new(),
            locations: String::new(),
            lua_blocks: None,
            lua_paths: None,
        }
    }
}

impl Config {
    /// The configuration of the original library's synopsis: no exit hook, default
    /// `interval`, `failed` and `start_timeout`.
    pub fn synopsis() -> Config {
        Config {
            short_intervals: false,
            exit_hook: false,
            ..Config::default()
        }
    }

    /// The two configurations every lifecycle scenario runs in: the synopsis's, and
    /// with the exit hook and short intervals; with `tune` applied to each.
    pub fn both(tune: impl Fn(&mut Config)) -> [Config; 2] {
        [Config::synopsis(), Config::default()].map(|mut c| {
            tune(&mut c);
            c
        })
    }
}

pub struct Nginx {
    dir: TempDir,
    pub port: u16,
    /// Every nginx master pid seen, killed (with its workers) on drop.
    masters: Vec<u32>,
}

/// A free loopback port, as the kernel picks it.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory holding `libworker_manager_ffi.so`, built as a dependency of these
/// tests: `target/<profile>/deps`, beside the test executable.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z") | Some("X") | None)
        })
        .unwrap_or(false)
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Reaps every child of this process that has exited (nginx masters orphaned to this
/// process, which is made a subreaper).
pub fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: a valid pointer to a status word.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

/// Makes this test process the reaper of the processes its children orphan, so that
/// daemonised and upgraded nginx masters stay reachable and get reaped.
pub fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// How much slower than native nginx runs in this test run: 10 under a wrapper
/// (`WM_NGINX_WRAPPER`: valgrind), else 1. Latency bounds are multiplied by it.
pub fn slowdown() -> u32 {
    if std::env::var_os("WM_NGINX_WRAPPER").is_some_and(|w| !w.is_empty()) {
        10
    } else {
        1
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests of one binary that start nginx (one nginx at a time), and
/// makes the test process a subreaper. Hold the guard for the whole test.
pub fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    guard
}

/// nginx in a new prefix, configured with `config` and started; and its master.
pub fn start(config: &Config) -> (Nginx, u32) {
    let mut nginx = Nginx::new();
    nginx.write_config(config);
    let master = nginx.start();
    (nginx, master)
}

/// Removes a file when dropped: a registry nginx created outside its prefix.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Nginx {
    pub fn new() -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("wm-nginx-")
            .tempdir()
            .unwrap();
        // Workers run as nobody: they append to events.log and read the prefix.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(dir.path().join("conf")).unwrap();
        fs::create_dir(dir.path().join("logs")).unwrap();
        let events = dir.path().join("events.log");
        fs::write(&events, "").unwrap();
        fs::set_permissions(&events, fs::Permissions::from_mode(0o666)).unwrap();
        Nginx {
            dir,
            port: free_port(),
            masters: Vec::new(),
        }
    }

    pub fn prefix(&self) -> &Path {
        self.dir.path()
    }

    /// Polls `/status` until its body starts with `prefix`; returns the body.
    pub fn wait_status(&self, prefix: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let body = self.get("/status");
            if body.starts_with(prefix) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/status never said {prefix}: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry file, inside the prefix unless the options name another.
    pub fn registry(&self) -> PathBuf {
        self.prefix().join("registry.wm")
    }

    /// Lua for `init_by_lua` that defines the global `WM_RECORD(name)`: a callback
    /// that appends its `info` and arguments as one JSON object to `events.log`,
    /// with `callback` (`name`), `by` (the pid running it) and `t` (wall-clock
    /// nanoseconds when it ran), then runs `in_callback` (`name` and `info` in
    /// scope).
    pub fn record_lua(&self, in_callback: &str) -> String {
        format!(
            r#"
        local ffi = require("ffi")
        -- A record is flat: strings, numbers, booleans. Encoded here rather than
        -- with cjson, whose buffers the end of a Lua VM may free before the
        -- callbacks that run in it (a configuration given up, a worker's exit).
        local function encode(record)
            local parts = {{}}
            for k, v in pairs(record) do
                local t = type(v)
                if t == "string" then
                    v = string.format("%q", v):gsub("\\\n", "\\n")
                elseif t == "number" then
                    v = string.format("%.17g", v)
                elseif t == "boolean" then
                    v = tostring(v)
                else
                    v = nil
                end
                if v then
                    parts[#parts + 1] = string.format("%q:%s", k, v)
                end
            end
            return "{{" .. table.concat(parts, ",") .. "}}"
        end
        ffi.cdef[[
            typedef struct {{ long sec; long nsec; }} wm_test_timespec;
            int clock_gettime(int clock, wm_test_timespec *ts);
        ]]
        local ts = ffi.new("wm_test_timespec")
        function WM_RECORD(name)
            return function(id, n_prev, n_mine, n_next, info)
                ffi.C.clock_gettime(0, ts)
                local record = {{}}
                for k, v in pairs(info or {{}}) do
                    record[k] = v
                end
                record.callback = name
                record.id = tostring(id)
                record.n_prev = n_prev
                record.n_mine = n_mine
                record.n_next = n_next
                record.by = ngx.worker.pid()
                record.t = string.format("%d%09d", tonumber(ts.sec), tonumber(ts.nsec))
                -- The whole line in one write: it is appended whole.
                local f = assert(io.open("{events}", "a"))
                f:write(encode(record) .. "\n")
                f:close()
                {in_callback}
            end
        end
"#,
            events = self.prefix().join("events.log").display(),
        )
    }

    pub fn write_config(&self, c: &Config) {
        let opts = if c.opts.contains("path =") || c.opts.contains("shm =") {
            c.opts.clone()
        } else {
            format!("path = \"{}\", {}", self.registry().display(), c.opts)
        };
        let lua_blocks = c.lua_blocks.clone().unwrap_or_else(|| {
            format!(
                r#"
    init_by_lua_block {{
        {record}
        local wm = require("resty.worker.manager")
        assert(wm.on_init_by_lua({{
            {intervals}
            on_worker_crash = WM_RECORD("worker_crash"),
            on_generation_abort = WM_RECORD("generation_abort"),
            on_worker_hang = WM_RECORD("worker_hang"),
            on_worker_recover = WM_RECORD("worker_recover"),
            on_worker_crash_loop = WM_RECORD("worker_crash_loop"),
            on_worker_crash_loop_end = WM_RECORD("worker_crash_loop_end"),
            {opts}
        }}, WM_RECORD("master_start"), WM_RECORD("master_exit")))
    }}
    init_worker_by_lua_block {{
        {before_worker}
        assert(require("resty.worker.manager").on_init_worker_by_lua(
            WM_RECORD("worker_start"), WM_RECORD("worker_exit")))
    }}
"#,
                record = self.record_lua(&c.in_callback),
                intervals = if c.short_intervals {
                    "interval = 0.2, failed = 1,"
                } else {
                    ""
                },
                opts = opts,
                before_worker = c.before_worker,
            )
        });
        let exit_hook = if c.exit_hook {
            r#"exit_worker_by_lua_block { require("resty.worker.manager").on_exit_worker_by_lua() }"#
        } else {
            ""
        };
        let (path, cpath) = c.lua_paths.clone().unwrap_or_else(|| {
            (
                format!("{}/?.lua;;", repo().join("lib").display()),
                format!("{}/?.so;;", lib_dir().display()),
            )
        });
        let conf = format!(
            r#"
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes {workers};
daemon {daemon};
master_process on;
pid logs/nginx.pid;
error_log logs/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    lua_package_path "{path}";
    lua_package_cpath "{cpath}";
    {lua_blocks}
    {exit_hook}
    {http}
    server {{
        listen 127.0.0.1:{port};
        location = /status {{
            content_by_lua_block {{
                local status, err = require("resty.worker.manager").status()
                if not status then
                    ngx.say("err=", err)
                    return
                end
                local live = 0
                for _, w in ipairs(status.workers) do
                    if w.state == "running" then live = live + 1 end
                end
                ngx.say("live=", live, " pid=", ngx.worker.pid())
            }}
        }}
        location = /metrics {{
            content_by_lua_block {{
                local text, err = require("resty.worker.manager").metrics()
                ngx.print(text or ("err=" .. err))
            }}
        }}
        {locations}
    }}
}}
"#,
            workers = c.workers,
            daemon = if c.daemon { "on" } else { "off" },
            port = self.port,
            http = c.http,
            locations = c.locations,
        );
        fs::write(self.prefix().join("conf/nginx.conf"), conf).unwrap();
    }

    /// Starts nginx (absolute path, as binary upgrades need) and waits for its pid file.
    pub fn start(&mut self) -> u32 {
        let _ = fs::remove_file(self.prefix().join("logs/nginx.pid"));
        // Through a shell: nginx ignores a binary upgrade signal while its parent is
        // the process that started it, and a daemonised master is reparented to this
        // test process (a subreaper), so the starter must be another process.
        // WM_NGINX_WRAPPER: a command to run nginx under (valgrind, by
        // scripts/valgrind.sh).
        let wrapper = std::env::var("WM_NGINX_WRAPPER").unwrap_or_default();
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{wrapper} {NGINX} -p \"$0\" -c conf/nginx.conf"))
            .arg(self.prefix())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(self.prefix().join("logs/stderr.log")).unwrap(),
            ))
            .spawn()
            .expect("start nginx");
        self.masters.push(child.id());
        // The Child handle is not kept: exited masters are reaped by `reap`.
        std::mem::forget(child);
        let master = self.wait_for_pid(None);
        self.masters.push(master);
        master
    }

    /// Waits until the pid file names a live master other than `not`.
    pub fn wait_for_pid(&self, not: Option<u32>) -> u32 {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(text) = fs::read_to_string(self.prefix().join("logs/nginx.pid")) {
                if let Ok(pid) = text.trim().parse::<u32>() {
                    if Some(pid) != not && alive(pid) {
                        return pid;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        let mut text =
            fs::read_to_string(self.prefix().join("logs/stderr.log")).unwrap_or_default();
        text.push_str(
            &fs::read_to_string(self.prefix().join("logs/error.log")).unwrap_or_default(),
        );
        text
    }

    pub fn master(&self) -> u32 {
        self.wait_for_pid(None)
    }

    pub fn adopt(&mut self, master: u32) {
        self.masters.push(master);
    }

    /// The live worker pids of `master`.
    pub fn workers(&self, master: u32) -> Vec<u32> {
        children(master).into_iter().filter(|&p| alive(p)).collect()
    }

    /// Every event recorded so far; fails on a line that is not one.
    pub fn events(&self) -> Vec<Ev> {
        let text = fs::read_to_string(self.prefix().join("events.log")).unwrap_or_default();
        // Only whole lines: a callback may be appending one as this reads.
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        whole
            .lines()
            .map(|line| parse(line).unwrap_or_else(|e| panic!("events.log: {e}: {line}")))
            .collect()
    }

    /// The events recorded by the callback of `kind`.
    pub fn named(&self, kind: EventKind) -> Vec<Ev> {
        self.events().into_iter().filter(|e| e.is(kind)).collect()
    }

    /// Waits until `done` holds of the events so far; returns them.
    pub fn wait(&self, what: &str, done: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events:\n{}\nlogs:\n{}",
                fs::read_to_string(self.prefix().join("events.log")).unwrap_or_default(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the callback of `kind` recorded at least `n` events.
    pub fn wait_n(&self, kind: EventKind, n: usize) -> Vec<Ev> {
        self.wait(&format!("{n} x {kind}"), |events| {
            events.iter().filter(|e| e.is(kind)).count() >= n
        });
        self.named(kind)
    }

    /// Waits until `master` and its workers are gone.
    pub fn wait_gone(&self, master: u32) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while alive(master) {
            reap();
            assert!(Instant::now() < deadline, "nginx {master} did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        reap();
    }

    /// An HTTP GET on the test server; the body.
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }
}

/// `pid` and all its descendants, parents first.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The whole tree first, then the kills: killing a master first would orphan
        // its workers out of reach.
        let doomed: Vec<u32> = self.masters.iter().flat_map(|&m| tree(m)).collect();
        for &pid in &doomed {
            signal(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while doomed.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            reap();
            std::thread::sleep(Duration::from_millis(10));
        }
        reap();
    }
}
