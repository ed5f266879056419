//! A node under measurement: a real nginx (Debian's, with the real Lua module)
//! tracked either by this product's `resty.worker.manager` or by the original
//! lua-resty-worker-manager, configured the same way. Callbacks record each event
//! with the wall-clock nanosecond they ran at (`t=`).

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use worker_manager::EventKind;

use crate::nginx::{Config, Ev, Nginx};

/// Which library tracks the node.
#[derive(Debug, Clone)]
pub enum Tracker {
    Product,
    /// The original, from the directory holding its `manager.lua`.
    Original {
        dir: PathBuf,
    },
    /// No tracker: each worker runs a timer that does nothing, at the heartbeat
    /// interval, to measure what nginx's timers cost by themselves.
    Bare,
}

impl Tracker {
    pub fn name(&self) -> &'static str {
        match self {
            Tracker::Product => "worker-manager",
            Tracker::Original { .. } => "original",
            Tracker::Bare => "nginx alone",
        }
    }
}

/// The original keeps everything in this shared dict.
const ORIGINAL_SHM: &str = "wm_original";

#[derive(Debug, Clone)]
pub struct Settings {
    pub workers: u32,
    /// Heartbeat interval and overrun, seconds.
    pub interval: f64,
    pub failed: f64,
    /// Lua run in every callback after it recorded its event (`name` in scope).
    pub in_callback: String,
    /// Lua run in every worker's `init_worker_by_lua` once it registered (the
    /// product only): a job of the scenario's own.
    pub in_worker: String,
}

impl Settings {
    pub fn new(workers: u32, interval: f64, failed: f64) -> Settings {
        Settings {
            workers,
            interval,
            failed,
            in_callback: String::new(),
            in_worker: String::new(),
        }
    }
}

pub struct Node {
    pub nginx: Nginx,
    pub master: u32,
    pub tracker: Tracker,
    pub settings: Settings,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Time the process has spent on a CPU, from `/proc/<pid>/schedstat` (nanoseconds);
/// 0 for a process that is gone.
pub fn cpu_ns(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The nanosecond an event's callback ran at.
pub fn at(e: &Ev) -> u64 {
    e.t
}

/// The generation (the original: master id) an event belongs to: the numeric id of
/// master events, the prefix of a worker id `"<generation>-<pid>"`.
pub fn generation_of(e: &Ev) -> u64 {
    let id = e.get("id");
    id.split('-').next().unwrap_or(id).parse().unwrap_or(0)
}

/// Events named `name` of generation `generation`.
pub fn of(events: &[Ev], name: &str, generation: u64) -> Vec<Ev> {
    events
        .iter()
        .filter(|e| e.name == name && generation_of(e) == generation)
        .cloned()
        .collect()
}

impl Node {
    pub fn start(tracker: &Tracker, settings: &Settings) -> Node {
        let mut nginx = Nginx::new();
        let record = nginx.record_lua(&settings.in_callback);
        let (interval, failed) = (settings.interval, settings.failed);
        let config = match tracker {
            // As the original's synopsis configures it: no exit_worker_by_lua.
            Tracker::Product => Config {
                workers: settings.workers,
                exit_hook: false,
                // Scenarios add servers here (conf/extra.conf, empty at first).
                http: "include extra.conf;".into(),
                lua_blocks: Some(format!(
                    r#"
    init_by_lua_block {{
        {record}
        assert(require("resty.worker.manager").on_init_by_lua({{
            path = "{registry}", interval = {interval}, failed = {failed},
            on_worker_crash = WM_RECORD("worker_crash"),
            on_generation_abort = WM_RECORD("generation_abort"),
        }}, WM_RECORD("master_start"), WM_RECORD("master_exit")))
    }}
    init_worker_by_lua_block {{
        assert(require("resty.worker.manager").on_init_worker_by_lua(
            WM_RECORD("worker_start"), WM_RECORD("worker_exit")))
        {in_worker}
    }}
"#,
                    registry = nginx.registry().display(),
                    in_worker = settings.in_worker,
                )),
                ..Config::default()
            },
            Tracker::Original { dir } => Config {
                workers: settings.workers,
                exit_hook: false,
                http: format!("lua_shared_dict {ORIGINAL_SHM} 10m;"),
                // The tracker's own count of the newest generation's workers, and the
                // size of its state document.
                locations: format!(
                    r#"
        location = /count {{
            content_by_lua_block {{
                local shm = ngx.shared.{ORIGINAL_SHM}
                local data = shm:get("[NODE_TRACKER] DATA") or "{{}}"
                local id = shm:get("[NODE_TRACKER] RELOAD")
                local doc = require("cjson").decode(data)
                local mine = id and (doc[id] or doc[tostring(id)]) or {{}}
                ngx.say(mine.n or -1, " ", #data)
            }}
        }}"#
                ),
                lua_blocks: Some(format!(
                    r#"
    init_by_lua_block {{
        package.path = "{dir}/?.lua;" .. package.path
        {record}
        assert(require("manager").on_init_by_lua({{
            shm = "{ORIGINAL_SHM}", interval = {interval}, failed = {failed},
        }}, WM_RECORD("master_start"), WM_RECORD("master_exit")))
    }}
    init_worker_by_lua_block {{
        assert(require("manager").on_init_worker_by_lua(
            WM_RECORD("worker_start"), WM_RECORD("worker_exit")))
    }}
"#,
                    dir = dir.display(),
                )),
                ..Config::default()
            },
            Tracker::Bare => Config {
                workers: settings.workers,
                exit_hook: false,
                lua_blocks: Some(format!(
                    r#"
    init_by_lua_block {{
        {record}
    }}
    init_worker_by_lua_block {{
        WM_RECORD("worker_start")("1-" .. ngx.worker.pid())
        assert(ngx.timer.every({interval}, function() end))
    }}
"#
                )),
                ..Config::default()
            },
        };
        nginx.write_config(&config);
        fs::write(nginx.prefix().join("conf/extra.conf"), "").unwrap();
        let master = nginx.start();
        let node = Node {
            nginx,
            master,
            tracker: tracker.clone(),
            settings: settings.clone(),
        };
        node.wait_started(1, settings.workers);
        node
    }

    pub fn events(&self) -> Vec<Ev> {
        self.nginx.events()
    }

    /// Waits until `n` workers of `generation` have started; returns their events.
    pub fn wait_started(&self, generation: u64, n: u32) -> Vec<Ev> {
        let events = self
            .nginx
            .wait(&format!("{n} workers of generation {generation}"), |ev| {
                of(ev, "worker_start", generation).len() >= n as usize
            });
        of(&events, "worker_start", generation)
    }

    /// The live worker processes.
    pub fn workers(&self) -> Vec<u32> {
        self.nginx.workers(self.master)
    }

    /// The newest generation that started.
    pub fn generation(&self) -> u64 {
        self.nginx
            .named(EventKind::MasterStart)
            .iter()
            .map(generation_of)
            .max()
            .unwrap_or(0)
    }

    /// The original's own count of the newest generation's workers, and the size of
    /// its state document in bytes.
    pub fn original_state(&self) -> (i64, u64) {
        let body = self.nginx.get("/count");
        let mut words = body.split_whitespace();
        let mut next = || words.next().and_then(|w| w.parse::<i64>().ok());
        match (next(), next()) {
            (Some(n), Some(size)) => (n, size as u64),
            _ => panic!("unexpected /count answer {body:?}: {}", self.nginx.stderr()),
        }
    }

    /// Polls `probe` every `every` until it holds, for at most `limit`; returns the
    /// wall-clock nanosecond it was first seen to hold.
    pub fn poll_until(
        &self,
        what: &str,
        every: Duration,
        limit: Duration,
        probe: impl Fn() -> bool,
    ) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            if probe() {
                return now_ns();
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} not seen within {limit:?}",
                self.tracker.name()
            );
            std::thread::sleep(every);
        }
    }

    /// The size of the product's registry file and the bytes it occupies.
    pub fn registry_size(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(self.nginx.registry()).expect("the registry exists");
        (meta.len(), meta.blocks() * 512)
    }
}
