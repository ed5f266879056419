//! `wm-probe REGISTRY [LOCK_TIMEOUT_MS]`: one real process acting as a master or a
//! worker, driven line by line on stdin, so that tests can kill it at any moment.
//!
//! Every event handed to a callback is printed as one line of JSON, an object in the
//! schema of `worker-manager events --json` (`json.rs`); every command ends
//! with a line `ok ...` or `err <message>`.
//!
//! Commands:
//! - `gen [INTERVAL_MS FAILED_MS START_TIMEOUT_MS]`: register a generation (this
//!   process is its master); prints `ok <id>`
//! - `upgrade`: fork a child that registers a generation as a new master whose
//!   parent is this process (a binary upgrade); the child prints `ok <id> <pid>` and
//!   then waits to be killed
//! - `worker GEN INDEX`: register this process as a worker; prints `ok <id>`
//! - `worker-stall GEN INDEX`: register, and stay inside the `worker_start` callback
//!   (holding the registry lock) after printing `stalled`
//! - `beat`: heartbeat
//! - `announce`: announce a graceful exit (shutdown began; the process goes on)
//! - `exit graceful|fast`
//! - `sweep`
//! - `close GEN`: this master closed the configuration of GEN (nginx: its Lua VM
//!   ended)
//! - `commit GEN`: this master committed GEN
//! - `live GEN`: prints `ok <live workers of GEN>`
//! - `quit`

use std::io::{self, BufRead, Write};
use std::time::Duration;

use worker_manager::{Event, GenerationConfig, Options, Registry, Worker};

#[allow(dead_code)] // The probe writes events; the tests read them back.
mod json;

fn print_event(event: &Event) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", json::to_line(event));
    let _ = out.flush();
}

fn reply(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize) -> Result<T, String> {
    words
        .get(i)
        .ok_or_else(|| format!("missing argument {i}"))?
        .parse()
        .map_err(|_| format!("bad argument {i}: {:?}", words[i]))
}

fn generation_config(words: &[&str]) -> Result<GenerationConfig, String> {
    let mut config = GenerationConfig::default();
    if words.len() > 1 {
        config.interval = Duration::from_millis(arg(words, 1)?);
        config.failed = Duration::from_millis(arg(words, 2)?);
        config.start_timeout = Duration::from_millis(arg(words, 3)?);
    }
    Ok(config)
}

fn stall_forever() -> ! {
    loop {
        std::thread::park();
    }
}

fn run(registry: &Registry, worker: &mut Option<Worker>, words: &[&str]) -> Result<String, String> {
    let err = |e: worker_manager::Error| e.to_string();
    match words.first().copied().unwrap_or("") {
        "gen" => {
            let config = generation_config(words)?;
            let id = registry
                .register_generation(&config, print_event)
                .map_err(err)?;
            Ok(format!("ok {id}"))
        }
        "upgrade" => {
            let config = generation_config(words)?;
            // SAFETY: this process is single-threaded, so the child may run any code.
            match unsafe { libc::fork() } {
                -1 => Err(io::Error::last_os_error().to_string()),
                0 => {
                    match registry.register_generation(&config, print_event) {
                        Ok(id) => reply(&format!("ok {id} {}", std::process::id())),
                        Err(e) => reply(&format!("err {e}")),
                    }
                    stall_forever()
                }
                _ => Ok(String::new()),
            }
        }
        "worker" | "worker-stall" => {
            let stall = words[0] == "worker-stall";
            let w = registry
                .register_worker(arg(words, 1)?, arg(words, 2)?, |e| {
                    print_event(e);
                    if stall && e.kind() == worker_manager::EventKind::WorkerStart {
                        reply("stalled");
                        stall_forever();
                    }
                })
                .map_err(err)?;
            let id = w.id().to_string();
            *worker = Some(w);
            Ok(format!("ok {id}"))
        }
        "beat" => {
            let w = worker.as_ref().ok_or("not a worker")?;
            registry.heartbeat(w).map_err(err)?;
            Ok("ok".into())
        }
        "announce" => {
            let w = worker.as_ref().ok_or("not a worker")?;
            registry.announce_exit(w, print_event).map_err(err)?;
            Ok("ok".into())
        }
        "exit" => {
            let w = worker.take().ok_or("not a worker")?;
            registry
                .exit_worker(w, words.get(1) != Some(&"fast"), print_event)
                .map_err(err)?;
            Ok("ok".into())
        }
        "sweep" => {
            registry.sweep(print_event).map_err(err)?;
            Ok("ok".into())
        }
        "close" => {
            registry
                .configuration_closed(arg(words, 1)?, print_event)
                .map_err(err)?;
            Ok("ok".into())
        }
        "commit" => {
            registry
                .commit_generation(arg(words, 1)?, print_event)
                .map_err(err)?;
            Ok("ok".into())
        }
        "live" => {
            let snapshot = registry.snapshot().map_err(err)?;
            Ok(format!("ok {}", snapshot.live(arg(words, 1)?)))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: wm-probe REGISTRY [LOCK_TIMEOUT_MS]");
        std::process::exit(2);
    };
    let mut options = Options::default();
    if let Some(ms) = args.get(2).and_then(|a| a.parse().ok()) {
        options.lock_timeout = Duration::from_millis(ms);
    }
    let registry = match Registry::open(path, &options) {
        Ok(r) => r,
        Err(e) => {
            reply(&format!("err {e}"));
            std::process::exit(1);
        }
    };
    reply(&format!("ready {}", std::process::id()));
    let mut worker = None;
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            break;
        }
        match run(&registry, &mut worker, &words) {
            Ok(done) if done.is_empty() => {}
            Ok(done) => reply(&done),
            Err(e) => reply(&format!("err {e}")),
        }
    }
}
