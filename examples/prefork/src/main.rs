//! A pre-fork server on the worker-manager Rust API, and a demo that drives it.
//!
//! `prefork serve REGISTRY [WORKERS]`: a master forks WORKERS workers (default 2);
//! SIGHUP makes a new generation (new workers start, then the old ones quit, as
//! nginx reloads); SIGQUIT stops gracefully, SIGTERM fast; a worker that dies is
//! respawned with the same index. Every process prints the events its callbacks get.
//!
//! `prefork demo`: runs `serve` on a temporary registry and drives it through start,
//! reload, kill -9 of a worker and stop, waiting for each step's events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use worker_manager::{Event, GenerationConfig, Options, Registry};

const TICK: Duration = Duration::from_millis(200);

fn say(role: &str, text: &str) {
    // One write per line: lines of all processes interleave whole on the pipe.
    let line = format!("[{role} {}] {text}\n", std::process::id());
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

fn printer(role: &'static str) -> impl FnMut(&Event) {
    move |event: &Event| say(role, &event.to_string())
}

/// The signals this program handles, blocked so that they are taken synchronously
/// with `sigtimedwait`; the mask is inherited by forked workers.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, then sigprocmask with valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals, at most `timeout`; `None` on timeout.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid pointers to a signal set and a timespec.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// The life of one worker process: register, tick (heartbeat, sweep, and the
/// once-per-node job when it leads), exit.
fn worker(registry: &Registry, set: &libc::sigset_t, generation: u64, index: u32) -> ! {
    let me = match registry.register_worker(generation, index, printer("worker")) {
        Ok(w) => w,
        Err(e) => {
            say("worker", &format!("cannot register: {e}"));
            std::process::exit(1);
        }
    };
    // The term this worker leads in; the job runs only while is_leader() says so,
    // checked (one atomic load) before each run.
    let mut leading: Option<u64> = None;
    loop {
        let word = registry.leader_word();
        match (registry.is_leader(&me), leading) {
            (true, None) => {
                say(
                    "worker",
                    &format!(
                        "leads the node (term {}): runs the once-per-node job",
                        word.term()
                    ),
                );
                leading = Some(word.term());
            }
            (false, Some(_)) => {
                say("worker", "no longer leads");
                leading = None;
            }
            _ => {}
        }
        match wait_signal(set, TICK) {
            None => {
                let _ = registry.heartbeat(&me);
                if let Err(e) = registry.sweep(printer("worker")) {
                    say("worker", &format!("sweep failed: {e}"));
                }
            }
            Some(sig @ (libc::SIGQUIT | libc::SIGTERM | libc::SIGINT)) => {
                let graceful = sig == libc::SIGQUIT;
                if let Err(e) = registry.exit_worker(me, graceful, printer("worker")) {
                    say("worker", &format!("exit failed: {e}"));
                }
                std::process::exit(0);
            }
            Some(_) => {}
        }
    }
}

struct Child {
    pid: u32,
    generation: u64,
    index: u32,
}

fn spawn(registry: &Registry, set: &libc::sigset_t, generation: u64, index: u32) -> Child {
    // SAFETY: the master is single-threaded, so the child may run ordinary code.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => worker(registry, set, generation, index),
        pid => Child {
            pid: pid as u32,
            generation,
            index,
        },
    }
}

/// Waits (at most 2 s) until `generation` has `workers` live workers.
fn wait_for_workers(
    registry: &Registry,
    generation: u64,
    workers: u32,
) -> Result<(), worker_manager::Error> {
    for _ in 0..200 {
        if registry.snapshot()?.live(generation) >= workers {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Reaps every exited child; returns them.
fn reap(children: &mut Vec<Child>) -> Vec<Child> {
    let mut gone = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: a valid pointer to a status word.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return gone;
        }
        if let Some(i) = children.iter().position(|c| c.pid == pid as u32) {
            gone.push(children.remove(i));
        }
    }
}

fn serve(path: &Path, workers: u32) -> Result<(), worker_manager::Error> {
    let set = block_signals();
    let registry = Registry::open(path, &Options::default())?;
    let config = GenerationConfig {
        interval: TICK,
        failed: TICK * 5,
        expected_workers: workers,
        ..GenerationConfig::default()
    };
    let mut generation = registry.register_generation(&config, printer("master"))?;
    let mut children: Vec<Child> = (0..workers)
        .map(|i| spawn(&registry, &set, generation, i))
        .collect();
    let mut stopping = false;
    loop {
        match wait_signal(&set, Duration::from_secs(1)) {
            Some(libc::SIGHUP) if !stopping => {
                say("master", "SIGHUP: new generation");
                generation = registry.register_generation(&config, printer("master"))?;
                let old: Vec<u32> = children.iter().map(|c| c.pid).collect();
                children.extend((0..workers).map(|i| spawn(&registry, &set, generation, i)));
                // Like nginx, let the new workers start before the old ones quit.
                wait_for_workers(&registry, generation, workers)?;
                for pid in old {
                    signal(pid, libc::SIGQUIT);
                }
            }
            Some(sig @ (libc::SIGQUIT | libc::SIGTERM | libc::SIGINT)) => {
                say(
                    "master",
                    if sig == libc::SIGQUIT {
                        "SIGQUIT: graceful stop"
                    } else {
                        "fast stop"
                    },
                );
                stopping = true;
                for c in &children {
                    signal(
                        c.pid,
                        if sig == libc::SIGQUIT {
                            libc::SIGQUIT
                        } else {
                            libc::SIGTERM
                        },
                    );
                }
            }
            Some(libc::SIGCHLD) => {
                for dead in reap(&mut children) {
                    // Only workers of the current generation are respawned, as nginx does.
                    if !stopping && dead.generation == generation {
                        say(
                            "master",
                            &format!(
                                "worker {} (index {}) died: respawning",
                                dead.pid, dead.index
                            ),
                        );
                        children.push(spawn(&registry, &set, generation, dead.index));
                    }
                }
                if stopping && children.is_empty() {
                    registry.sweep(printer("master"))?;
                    say("master", "all workers gone: exiting");
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

/// Drives `serve` through its life, waiting for each step's events.
fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new().prefix("prefork-demo-").tempdir()?;
    let registry = dir.path().join("registry.wm");
    let mut server = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(&registry)
        .arg("2")
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()?;
    // Whatever happens, nothing of the server outlives the demo: its process group
    // (the master and every worker it forked) is killed on the way out.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(self.0 as libc::pid_t), libc::SIGKILL) };
        }
    }
    let _stop = Stop(server.id());
    let master = server.id();
    let mut lines = BufReader::new(server.stdout.take().expect("piped stdout")).lines();
    let mut until = |what: &str, count: usize| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut seen = Vec::new();
        while seen.len() < count {
            let line = lines.next().ok_or("the server stopped early")??;
            println!("{line}");
            if line.contains(what) {
                seen.push(line);
            }
        }
        Ok(seen)
    };
    println!("== start: a master and 2 workers");
    until(" worker_start ", 2)?;
    println!("\n== SIGHUP: reload (new generation; the old workers exit with reason=reload)");
    signal(master, libc::SIGHUP);
    until(" master_exit ", 1)?;
    println!("\n== kill -9 of the leader: the respawn reports the crash, respawn=true, and leads");
    let reg = Registry::open(&registry, &Options::default())?;
    let victim = reg.leader().0.ok_or("no leader")?.pid;
    signal(victim, libc::SIGKILL);
    until("respawn=true", 1)?;
    until("cause=death", 1)?;
    println!("\n== SIGQUIT: graceful stop (reason=stop; the last worker fires master_exit with n_next=nil)");
    signal(master, libc::SIGQUIT);
    until("exiting", 1)?;
    server.wait()?;
    println!("\n== the journal, as any process can read it afterwards");
    let reg = Registry::open(&registry, &Options::default())?;
    for event in reg.events_since(0) {
        println!("{event}");
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let outcome: Result<(), Box<dyn std::error::Error>> = match args.get(1).map(String::as_str) {
        Some("serve") if args.len() >= 3 => {
            let workers = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(2);
            serve(Path::new(&args[2]), workers).map_err(Into::into)
        }
        Some("demo") => demo(),
        _ => Err("usage: prefork serve REGISTRY [WORKERS] | prefork demo".into()),
    };
    if let Err(e) = outcome {
        eprintln!("prefork: {e}");
        std::process::exit(1);
    }
}
