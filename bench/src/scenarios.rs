//! The measured scenarios. Each runs one real nginx per tracker, drives it with
//! real signals, and takes its figures from the callbacks' own timestamps, from
//! `/proc/<pid>/schedstat` (CPU, nanoseconds), and for the original's counts, which
//! no callback reports, from its shared dict.

use std::fs;
use std::time::Duration;

use worker_manager::Observer;

use crate::nginx::{signal, Ev};
use crate::node::{at, cpu_ns, generation_of, now_ns, of, Node, Settings, Tracker};

/// Figures in milliseconds (or microseconds, as the caller says).
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    fn push_ns(&mut self, from: u64, to: u64) {
        self.0.push(to.saturating_sub(from) as f64 / 1e6);
    }

    /// Nearest-rank percentile.
    pub fn percentile(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// The events recorded after the first `skip`.
fn after(events: &[Ev], skip: usize) -> &[Ev] {
    &events[skip.min(events.len())..]
}

fn kill9(pid: u32) {
    signal(pid, libc::SIGKILL);
}

pub struct Crash {
    /// From the kill to the `worker_crash` callback (the original has none).
    pub to_callback: Option<Samples>,
    /// From the kill until the tracker's count of the generation's workers is the
    /// real one again, the respawn included.
    pub to_counts: Samples,
    /// `n_mine` as the respawned workers saw it (the real number is `workers`).
    pub respawn_n_mine: Vec<u64>,
    pub workers: u32,
}

/// kill -9 of a worker, `kills` times, one at a time.
pub fn crash(tracker: &Tracker, interval: f64, failed: f64, kills: u32) -> Crash {
    let workers = 4;
    let node = Node::start(tracker, &Settings::new(workers, interval, failed));
    let generation = node.generation();
    let mut to_callback = Samples::default();
    let mut to_counts = Samples::default();
    let mut respawn_n_mine = Vec::new();
    for k in 0..kills {
        let skip = node.events().len();
        let live = node.workers();
        let victim = live[k as usize % live.len()];
        let replaced = format!("{generation}-{victim}");
        let t0 = now_ns();
        kill9(victim);
        let events = node.nginx.wait("the respawn", |ev| {
            after(ev, skip)
                .iter()
                .any(|e| e.name == "worker_start" && generation_of(e) == generation)
        });
        let respawn = after(&events, skip)
            .iter()
            .find(|e| e.name == "worker_start")
            .unwrap()
            .clone();
        respawn_n_mine.push(respawn.num("n_mine").unwrap_or(0));
        match tracker {
            Tracker::Product | Tracker::Bare => {
                let events = node.nginx.wait("the crash", |ev| {
                    after(ev, skip)
                        .iter()
                        .any(|e| e.name == "worker_crash" && e.get("worker") == replaced)
                });
                let crash = after(&events, skip)
                    .iter()
                    .find(|e| e.name == "worker_crash")
                    .unwrap();
                to_callback.push_ns(t0, at(crash));
                assert_eq!(respawn.get("replaces"), replaced);
                // Counted exactly from the crash on; the respawn makes it whole.
                to_counts.push_ns(t0, at(&respawn));
            }
            Tracker::Original { .. } => {
                // The respawn counted the dead worker too; the count is right once a
                // heartbeat sweep drops the dead one.
                let limit = Duration::from_secs_f64(3.0 * (interval + failed) + 10.0);
                let right = node.poll_until(
                    "its count back to the real one",
                    Duration::from_millis(10),
                    limit,
                    || node.original_state().0 == i64::from(workers),
                );
                to_counts.push_ns(t0, right);
            }
        }
        node.nginx.wait("all workers back", |_| {
            node.workers().len() == workers as usize
        });
    }
    Crash {
        to_callback: matches!(tracker, Tracker::Product).then_some(to_callback),
        to_counts,
        respawn_n_mine,
        workers,
    }
}

/// What one reload took, from the signal (wall-clock nanoseconds).
struct ReloadTimes {
    signal: u64,
    master_start: u64,
    workers_started: u64,
    /// `None`: the old generation's `master_exit` never fired, although its workers
    /// all exited (the original loses it when its lock lets two exiting workers
    /// read the same count).
    master_exit: Option<u64>,
}

/// One reload: HUP, then the new generation's `master_start`, all its workers
/// started, and the old generation's `master_exit`, or all of its workers gone.
fn reload_once(node: &Node) -> ReloadTimes {
    let old = node.generation();
    let old_workers: Vec<u32> = of(&node.events(), "worker_start", old)
        .iter()
        .map(|e| e.by)
        .collect();
    let skip = node.events().len();
    let signal_at = now_ns();
    signal(node.master, libc::SIGHUP);
    let workers = node.settings.workers as usize;
    let events = node.nginx.wait("the reload", |ev| {
        let ev = after(ev, skip);
        let Some(new) = ev
            .iter()
            .find(|e| e.name == "master_start")
            .map(generation_of)
        else {
            return false;
        };
        of(ev, "worker_start", new).len() >= workers
            && (!of(ev, "master_exit", old).is_empty()
                || !old_workers.iter().any(|&p| crate::nginx::alive(p)))
    });
    // Read again: the log was read before the processes were seen gone, and the
    // last of them may have written `master_exit` in between.
    let events = if of(after(&events, skip), "master_exit", old).is_empty() {
        node.events()
    } else {
        events
    };
    let ev = after(&events, skip);
    let start = ev.iter().find(|e| e.name == "master_start").unwrap();
    let new = generation_of(start);
    ReloadTimes {
        signal: signal_at,
        master_start: at(start),
        workers_started: of(ev, "worker_start", new).iter().map(at).max().unwrap(),
        master_exit: of(ev, "master_exit", old).first().map(at),
    }
}

pub struct Reload {
    pub to_master_start: Samples,
    pub to_workers_started: Samples,
    pub to_master_exit: Samples,
    /// Reloads whose old generation never got its `master_exit`.
    pub missed_master_exit: u32,
}

pub fn reload(tracker: &Tracker, reloads: u32) -> Reload {
    let node = Node::start(tracker, &Settings::new(4, 10.0, 5.0));
    let mut r = Reload {
        to_master_start: Samples::default(),
        to_workers_started: Samples::default(),
        to_master_exit: Samples::default(),
        missed_master_exit: 0,
    };
    for _ in 0..reloads {
        let t = reload_once(&node);
        r.to_master_start.push_ns(t.signal, t.master_start);
        r.to_workers_started.push_ns(t.signal, t.workers_started);
        match t.master_exit {
            Some(exit) => r.to_master_exit.push_ns(t.signal, exit),
            None => r.missed_master_exit += 1,
        }
        wait_settled(&node);
    }
    r
}

/// Waits until only the newest generation's workers are left.
fn wait_settled(node: &Node) {
    let n = node.settings.workers as usize;
    node.nginx
        .wait("the old workers gone", |_| node.workers().len() == n);
}

pub struct Steady {
    pub workers: u32,
    pub interval: f64,
    pub reloads: u32,
    /// CPU per worker per heartbeat tick, microseconds: at the start, after the reloads.
    pub tick_us: (f64, f64),
    /// State size in bytes (the product: the registry file; the original: its JSON
    /// document in the shared dict), at the start and after the reloads.
    pub state_bytes: (u64, u64),
    /// Reloads whose old generation never got its `master_exit`.
    pub missed_master_exit: u32,
}

/// New workers compile their Lua and fault in their copy-on-write pages during
/// their first ticks: measured after this.
const WARM_UP: Duration = Duration::from_secs(3);

/// CPU of the workers over `window`, per worker and per tick.
fn tick_cost(node: &Node, window: Duration) -> f64 {
    wait_settled(node);
    std::thread::sleep(WARM_UP);
    let pids = node.workers();
    let before: u64 = pids.iter().map(|&p| cpu_ns(p)).sum();
    std::thread::sleep(window);
    let spent: u64 = pids.iter().map(|&p| cpu_ns(p)).sum::<u64>() - before;
    let ticks = pids.len() as f64 * window.as_secs_f64() / node.settings.interval;
    spent as f64 / ticks / 1e3
}

fn state_bytes(node: &Node) -> u64 {
    match node.tracker {
        Tracker::Product => node.registry_size().0,
        Tracker::Original { .. } => node.original_state().1,
        Tracker::Bare => 0,
    }
}

/// The same settings as [`steady`], without a tracker: what a tick costs nginx.
pub fn bare_tick(window: Duration) -> f64 {
    tick_cost(&Node::start(&Tracker::Bare, &STEADY), window)
}

/// Steady-cost settings: 8 workers beating every 50 ms.
const STEADY: Settings = Settings {
    workers: 8,
    interval: 0.05,
    failed: 2.0,
    in_callback: String::new(),
    in_worker: String::new(),
};

pub fn steady(tracker: &Tracker, reloads: u32, window: Duration) -> Steady {
    let settings = STEADY;
    let node = Node::start(tracker, &settings);
    let tick0 = tick_cost(&node, window);
    let size0 = state_bytes(&node);
    let mut missed_master_exit = 0;
    for i in 0..reloads {
        if reload_once(&node).master_exit.is_none() {
            missed_master_exit += 1;
        }
        wait_settled(&node);
        if (i + 1) % 100 == 0 {
            eprintln!("  {}: {} reloads", tracker.name(), i + 1);
        }
    }
    let tick_n = tick_cost(&node, window);
    let size_n = state_bytes(&node);
    Steady {
        workers: settings.workers,
        interval: settings.interval,
        reloads,
        tick_us: (tick0, tick_n),
        state_bytes: (size0, size_n),
        missed_master_exit,
    }
}

pub struct Contention {
    pub workers: u32,
    /// From the first to the last `worker_start` callback, ms.
    pub spread: Samples,
    /// CPU the workers had used when the last one had started, ms in all.
    pub worker_cpu: Samples,
}

/// `workers` workers starting at once, all registering under the lock.
pub fn contention(tracker: &Tracker, runs: u32) -> Contention {
    let workers = 16;
    let mut c = Contention {
        workers,
        spread: Samples::default(),
        worker_cpu: Samples::default(),
    };
    for _ in 0..runs {
        let node = Node::start(tracker, &Settings::new(workers, 10.0, 5.0));
        let cpu: u64 = node.workers().iter().map(|&p| cpu_ns(p)).sum();
        let starts = node.wait_started(1, workers);
        let times: Vec<u64> = starts.iter().map(at).collect();
        c.spread
            .push_ns(*times.iter().min().unwrap(), *times.iter().max().unwrap());
        c.worker_cpu.0.push(cpu as f64 / 1e6);
    }
    c
}

pub struct Stall {
    /// From the reload signal to the new generation's `master_start`, ms.
    pub wall_ms: f64,
    /// The master's CPU over that time, ms.
    pub master_cpu_ms: f64,
}

/// A worker stalls 3 s in a callback, holding the lock; meanwhile the master
/// reloads and must wait for the lock in `init_by_lua`.
pub fn stall(tracker: &Tracker) -> Stall {
    let mut settings = Settings::new(2, 10.0, 5.0);
    let node_flags = tempfile::Builder::new()
        .prefix("wm-bench-flags-")
        .tempdir()
        .unwrap();
    let flag = node_flags.path().join("stall");
    fs::set_permissions(
        node_flags.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    settings.in_callback = format!(
        r#"if name == "worker_start" then
               local flag = "{flag}"
               local f = io.open(flag, "r")
               if f then
                   f:close()
                   os.remove(flag)
                   WM_RECORD("stall_begin")()
                   os.execute("sleep 3")
               end
           end"#,
        flag = flag.display()
    );
    let node = Node::start(tracker, &settings);
    fs::write(&flag, "").unwrap();
    kill9(node.workers()[0]);
    node.nginx
        .wait("the stall", |ev| ev.iter().any(|e| e.name == "stall_begin"));
    let old = node.generation();
    let (t0, cpu0) = (now_ns(), cpu_ns(node.master));
    signal(node.master, libc::SIGHUP);
    let events = node.nginx.wait("the reload after the stall", |ev| {
        ev.iter()
            .any(|e| e.name == "master_start" && generation_of(e) > old)
    });
    let cpu1 = cpu_ns(node.master);
    let start = events
        .iter()
        .find(|e| e.name == "master_start" && generation_of(e) > old)
        .unwrap();
    Stall {
        wall_ms: at(start).saturating_sub(t0) as f64 / 1e6,
        master_cpu_ms: cpu1.saturating_sub(cpu0) as f64 / 1e6,
    }
}

/// nginx's verdicts, without `exit_worker_by_lua` and at the default interval.
pub struct Verdicts {
    /// The old generation's `master_exit` after the last old worker's real exit (its
    /// `worker_exit`, from the end of its Lua VM), at each reload.
    pub master_exit: Samples,
    /// A failed reload's `generation_abort` after nginx's "still could not bind()",
    /// as an inotify watch of the error log saw the line.
    pub failed_reload: Samples,
}

/// Waits for `needle` to be appended to the file at `path`, watching it with
/// inotify; returns the wall-clock nanosecond the write that brought it was seen.
fn seen_in_log(path: &std::path::Path, needle: &str) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path).expect("open the error log");
    let mut offset = file.seek(SeekFrom::End(0)).unwrap();
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: inotify_init1 has no preconditions.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    // SAFETY: a valid descriptor and C string.
    let watch = unsafe { libc::inotify_add_watch(fd, name.as_ptr(), libc::IN_MODIFY) };
    assert!(watch >= 0, "inotify_add_watch");
    let mut text = String::new();
    let seen = loop {
        let mut buf = [0u8; 4096];
        // SAFETY: a valid descriptor and buffer; blocks until the file changes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let at = now_ns();
        assert!(n > 0, "inotify read");
        file.seek(SeekFrom::Start(offset)).unwrap();
        offset += file.read_to_string(&mut text).unwrap() as u64;
        if text.contains(needle) {
            break at;
        }
    };
    // SAFETY: the descriptor is ours and closed once.
    unsafe { libc::close(fd) };
    seen
}

/// `trials` reloads timed for their `master_exit`, then `trials` reloads that nginx
/// gives up (a port already in use), timed for their abort.
pub fn verdicts(trials: u32) -> Verdicts {
    let node = Node::start(&Tracker::Product, &Settings::new(2, 10.0, 5.0));
    let mut master_exit = Samples::default();
    for _ in 0..trials {
        let old = node.generation();
        signal(node.master, libc::SIGHUP);
        let events = node.nginx.wait("the old generation's end", |ev| {
            !of(ev, "master_exit", old).is_empty() && node.generation() > old
        });
        let end = at(&of(&events, "master_exit", old)[0]);
        let last = of(&events, "worker_exit", old)
            .iter()
            .map(at)
            .max()
            .expect("the old workers exited");
        master_exit.push_ns(last, end);
        node.wait_started(node.generation(), node.settings.workers);
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = node.nginx.prefix().join("conf/extra.conf");
    let log = node.nginx.prefix().join("logs/error.log");
    let mut failed_reload = Samples::default();
    for _ in 0..trials {
        let failing = node.generation() + 1;
        let port = taken.local_addr().unwrap().port();
        fs::write(&extra, format!("server {{ listen 127.0.0.1:{port}; }}")).unwrap();
        let watcher = {
            let log = log.clone();
            std::thread::spawn(move || seen_in_log(&log, "still could not bind()"))
        };
        // The watch is set before the signal: give the thread its moment.
        std::thread::sleep(Duration::from_millis(50));
        signal(node.master, libc::SIGHUP);
        let gave_up = watcher.join().expect("the watcher");
        let events = node.nginx.wait("the abort", |ev| {
            !of(ev, "generation_abort", failing).is_empty()
        });
        failed_reload.push_ns(gave_up, at(&of(&events, "generation_abort", failing)[0]));
        fs::write(&extra, "").unwrap();
    }
    Verdicts {
        master_exit,
        failed_reload,
    }
}

/// How often every worker runs the leader's job.
pub const JOB_PERIOD: Duration = Duration::from_millis(10);

/// `leader_check` in the leadership scenarios: the default, left unset.
pub const LEADER_CHECK_S: f64 = 1.0;

/// One run of the job by a worker that found it leads.
#[derive(Debug, Clone, Copy)]
struct JobRun {
    pid: u32,
    term: u64,
    /// Wall-clock nanoseconds just before `is_leader()`, and just after it said yes.
    before: u64,
    after: u64,
}

/// The leader's job: a timer in every worker, every [`JOB_PERIOD`], that appends a
/// line to one file (in one write) when `is_leader()` says this worker leads.
struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new() -> Job {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("wm-bench-job-")
            .tempdir()
            .unwrap();
        // Workers run as nobody: they append to a file made for them.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let job = Job { dir };
        fs::write(job.path(), "").unwrap();
        fs::set_permissions(job.path(), fs::Permissions::from_mode(0o666)).unwrap();
        job
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("runs.log")
    }

    /// The job, for `init_worker_by_lua` (after the registration); it times its runs
    /// as the callbacks' records do, with the `timespec` type `record_lua` declares.
    fn lua(&self) -> String {
        format!(
            r#"
        do
            local wm = require("resty.worker.manager")
            local ffi = require("ffi")
            local before = ffi.new("wm_test_timespec")
            local after = ffi.new("wm_test_timespec")
            local function ns(ts)
                return string.format("%d%09d", tonumber(ts.sec), tonumber(ts.nsec))
            end
            local pid = ngx.worker.pid()
            local log = assert(io.open("{path}", "a"))
            assert(ngx.timer.every({period}, function(premature)
                if premature then
                    return
                end
                ffi.C.clock_gettime(0, before)
                local leads, term = wm.is_leader()
                if leads then
                    ffi.C.clock_gettime(0, after)
                    log:write(pid, " ", term, " ", ns(before), " ", ns(after), "\n")
                    log:flush()
                end
            end))
        end"#,
            path = self.path().display(),
            period = JOB_PERIOD.as_secs_f64(),
        )
    }

    /// Every run recorded so far, in the order of the writes.
    fn runs(&self) -> Vec<JobRun> {
        let text = fs::read_to_string(self.path()).unwrap_or_default();
        // Only whole lines: a worker may be appending one as this reads.
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        whole
            .lines()
            .map(|line| {
                let n: Vec<u64> = line
                    .split_whitespace()
                    .map(|w| w.parse().unwrap_or_else(|_| panic!("job run: {line}")))
                    .collect();
                assert_eq!(n.len(), 4, "job run: {line}");
                JobRun {
                    pid: n[0] as u32,
                    term: n[1],
                    before: n[2],
                    after: n[3],
                }
            })
            .collect()
    }
}

/// A node of 4 workers at the default settings, every worker running the job.
fn job_node(job: &Job) -> Node {
    let mut settings = Settings::new(4, 10.0, 5.0);
    settings.in_worker = job.lua();
    Node::start(&Tracker::Product, &settings)
}

/// The node's leader once its job runs there: its pid and term.
fn leader_running(node: &Node, observer: &Observer, job: &Job) -> (u32, u64) {
    let found = std::cell::Cell::new(None);
    node.nginx.wait("a leader running the job", |_| {
        let s = observer.snapshot();
        let Some(leader) = s.leader else {
            return false;
        };
        let runs = job.runs();
        let running = runs
            .iter()
            .any(|r| r.pid == leader.pid && r.term == s.leader_term);
        found.set(running.then_some((leader.pid, s.leader_term)));
        running
    });
    found.get().unwrap()
}

/// Leadership changes seen in the job's runs, and how many of them overlapped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Changes {
    /// Consecutive terms that ran the job in two different workers.
    pub changes: u32,
    /// Changes where a run of the earlier term checked `is_leader()` after a run of
    /// the later one had been told it leads; or terms that ran in two workers.
    pub overlaps: u32,
}

/// Orders the runs by term: one worker a term, and every run of an earlier term
/// began its check (`before`) before any run of a later term ended its own
/// (`after`).
fn changes(runs: &[JobRun]) -> Changes {
    use std::collections::BTreeMap;
    // term -> (its pid, its first `after`, its last `before`, whether another pid ran it)
    let mut terms: BTreeMap<u64, (u32, u64, u64, bool)> = BTreeMap::new();
    for r in runs {
        let t = terms
            .entry(r.term)
            .or_insert((r.pid, r.after, r.before, false));
        t.1 = t.1.min(r.after);
        t.2 = t.2.max(r.before);
        t.3 |= t.0 != r.pid;
    }
    let mut c = Changes::default();
    let mut earlier: Option<(u32, u64)> = None;
    for &(pid, first_after, last_before, shared) in terms.values() {
        if shared {
            c.overlaps += 1;
        }
        if let Some((previous, latest_before)) = earlier {
            if previous != pid {
                c.changes += 1;
                if latest_before >= first_after {
                    c.overlaps += 1;
                }
            }
        }
        let latest = earlier.map_or(last_before, |(_, b)| b.max(last_before));
        earlier = Some((pid, latest));
    }
    c
}

pub struct Failover {
    pub workers: u32,
    /// From the kill of the leader to the first run of the job in the new leader.
    pub to_new_leader: Samples,
    /// Kills whose new leader was the dead leader's respawn.
    pub to_respawn: u32,
    pub changes: Changes,
}

/// kill -9 of the leader, `kills` times, each once the new leader runs the job.
pub fn failover(kills: u32) -> Failover {
    let job = Job::new();
    let node = job_node(&job);
    let observer = Observer::open(node.nginx.registry()).expect("the registry");
    let workers = node.settings.workers;
    let mut to_new_leader = Samples::default();
    let mut to_respawn = 0;
    for _ in 0..kills {
        let (victim, term) = leader_running(&node, &observer, &job);
        let live = node.workers();
        let skip = job.runs().len();
        let t0 = now_ns();
        kill9(victim);
        let first = std::cell::Cell::new(None);
        node.nginx.wait("the new leader's job", |_| {
            let runs = job.runs();
            let next = after_runs(&runs, skip)
                .iter()
                .find(|r| r.pid != victim && r.term > term)
                .copied();
            first.set(next);
            next.is_some()
        });
        let first = first.get().unwrap();
        to_new_leader.push_ns(t0, first.after);
        if !live.contains(&first.pid) {
            to_respawn += 1;
        }
        node.nginx.wait("all workers back", |_| {
            node.workers().len() == workers as usize
        });
    }
    Failover {
        workers,
        to_new_leader,
        to_respawn,
        changes: changes(&job.runs()),
    }
}

/// The runs recorded after the first `skip`.
fn after_runs(runs: &[JobRun], skip: usize) -> &[JobRun] {
    &runs[skip.min(runs.len())..]
}

pub struct Handover {
    /// From the old leader's last run of the job to the new leader's first.
    pub gap: Samples,
    /// Reloads whose first new leader was a worker of the new generation.
    pub to_new_generation: u32,
    pub changes: Changes,
}

/// `reloads` reloads, each once the leader runs the job: the gap in its runs.
pub fn handover(reloads: u32) -> Handover {
    let job = Job::new();
    let node = job_node(&job);
    let observer = Observer::open(node.nginx.registry()).expect("the registry");
    let mut gap = Samples::default();
    let mut to_new_generation = 0;
    for _ in 0..reloads {
        let (old, term) = leader_running(&node, &observer, &job);
        let old_workers = node.workers();
        let old_generation = node.generation();
        signal(node.master, libc::SIGHUP);
        node.nginx.wait("the new leader's job", |_| {
            job.runs().iter().any(|r| r.pid != old && r.term > term)
        });
        let runs = job.runs();
        let last = runs
            .iter()
            .filter(|r| r.pid == old)
            .map(|r| r.after)
            .max()
            .unwrap();
        let next = runs.iter().find(|r| r.pid != old && r.term > term).unwrap();
        gap.push_ns(last, next.after);
        if !old_workers.contains(&next.pid) {
            to_new_generation += 1;
        }
        node.nginx
            .wait("the new generation", |_| node.generation() > old_generation);
        node.wait_started(node.generation(), node.settings.workers);
        wait_settled(&node);
    }
    Handover {
        gap,
        to_new_generation,
        changes: changes(&job.runs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pid: u32, term: u64, before: u64) -> JobRun {
        JobRun {
            pid,
            term,
            before,
            after: before + 1,
        }
    }

    #[test]
    fn a_change_overlaps_when_the_old_term_checks_after_the_new_one_was_told() {
        let clean = [run(1, 1, 10), run(1, 1, 20), run(2, 2, 25), run(2, 2, 35)];
        let c = changes(&clean);
        assert_eq!((c.changes, c.overlaps), (1, 0));
        // The old leader began a check after the new one had been told it leads.
        let late = [run(1, 1, 10), run(2, 2, 25), run(1, 1, 30), run(2, 3, 40)];
        let c = changes(&late);
        assert_eq!((c.changes, c.overlaps), (1, 1));
        // Two workers in one term.
        let shared = [run(1, 1, 10), run(2, 2, 25), run(3, 2, 26)];
        assert_eq!(changes(&shared).overlaps, 1);
    }
}
