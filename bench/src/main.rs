//! `wm-bench`: worker-manager in a real nginx, side by side with the original
//! lua-resty-worker-manager, in one run; writes `docs/BENCHMARKS.md`. Run by
//! `make bench`, as root (nginx's workers run as nobody).

mod node;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use node::Tracker;
use report::{Figures, Pair};

/// How long one step of a scenario (a start, a reload) may take before the run
/// fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

// The real-nginx harness of the test suites; each user takes its part of it.
#[allow(dead_code)]
#[path = "../../tests/tests/common/nginx.rs"]
mod nginx;

/// Measures worker-manager, and optionally the original, in a real nginx.
#[derive(Debug, Parser)]
#[command(name = "wm-bench")]
struct Args {
    /// The original's `manager.lua`, to measure side by side (needs Debian's
    /// lua-cjson). Without it, only worker-manager's own figures.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Output of `cargo bench -p worker-manager`, included as is.
    #[arg(long, value_name = "FILE")]
    micro: Option<PathBuf>,
    /// Where to write the report.
    #[arg(long, value_name = "FILE", default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// Workers killed in each crash scenario, and leaders in the failover one.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Reloads timed one by one (and in the leader's handover).
    #[arg(long, default_value_t = 10)]
    reloads: u32,
    /// Reloads between the two steady-cost measurements.
    #[arg(long, default_value_t = 500)]
    history: u32,
    /// Seconds of each steady-cost measurement.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Runs of the contention scenario.
    #[arg(long, default_value_t = 5)]
    runs: u32,
}

/// Runs `measure` for the product and, if given, the original.
fn both<T>(name: &str, trackers: &[Tracker], measure: impl Fn(&Tracker) -> T) -> Pair<T> {
    let mut figures = trackers.iter().map(|t| {
        eprintln!("{name}: {}", t.name());
        measure(t)
    });
    Pair {
        product: figures.next().expect("the product is always measured"),
        original: figures.next(),
    }
}

fn run(args: &Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let lib = exe.with_file_name("libworker_manager_ffi.so");
    if !lib.exists() {
        return Err(format!(
            "{} is missing: build it beside wm-bench (cargo build --release -p worker-manager-ffi -p wm-bench)",
            lib.display()
        ));
    }
    let mut trackers = vec![Tracker::Product];
    if let Some(path) = &args.baseline {
        let path = path
            .canonicalize()
            .map_err(|e| format!("baseline {}: {e}", path.display()))?;
        if path.file_name().and_then(|n| n.to_str()) != Some("manager.lua") {
            return Err(format!(
                "baseline {} must be the original's manager.lua",
                path.display()
            ));
        }
        trackers.push(Tracker::Original {
            dir: path.parent().unwrap().to_path_buf(),
        });
    }
    let micro = match &args.micro {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--micro {}: {e}", path.display()))?,
        ),
        None => None,
    };
    nginx::become_subreaper();
    let t = &trackers;
    let figures = Figures {
        command: format!(
            "`wm-bench{}`",
            std::env::args()
                .skip(1)
                .map(|a| format!(" {a}"))
                .collect::<String>()
        ),
        micro,
        crash_fast: both("crash, interval 1 s", t, |t| {
            scenarios::crash(t, 1.0, 1.0, args.kills)
        }),
        crash_default: both("crash, defaults", t, |t| {
            scenarios::crash(t, 10.0, 5.0, args.kills)
        }),
        reload: both("reload", t, |t| scenarios::reload(t, args.reloads)),
        steady: both("steady cost", t, |t| {
            scenarios::steady(t, args.history, Duration::from_secs(args.window))
        }),
        bare_tick_us: {
            eprintln!("steady cost: nginx alone");
            scenarios::bare_tick(Duration::from_secs(args.window))
        },
        contention: both("contention", t, |t| scenarios::contention(t, args.runs)),
        stall: both("stalled lock", t, scenarios::stall),
        verdicts: {
            eprintln!("verdicts: worker-manager");
            scenarios::verdicts(args.reloads)
        },
        failover: {
            eprintln!("failover: worker-manager");
            scenarios::failover(args.kills)
        },
        handover: {
            eprintln!("handover at a reload: worker-manager");
            scenarios::handover(args.reloads)
        },
    };
    let text = report::render(&figures);
    std::fs::write(&args.out, &text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    print!("{text}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
