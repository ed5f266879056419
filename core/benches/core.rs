//! The core's hot paths, with figures quoted in `docs/BENCHMARKS.md`:
//! `cargo bench -p worker-manager`.
//!
//! Workers for the sweeps are real processes: this benchmark executable re-runs
//! itself as a worker (`WM_BENCH_WORKER=path:generation:index`), registers, and waits
//! to be killed at the end; it also dies with the benchmark (`PR_SET_PDEATHSIG`) if
//! the benchmark is killed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use divan::counter::ItemsCount;
use divan::Bencher;
use worker_manager::{Capacities, GenerationConfig, Options, Registry};

const WORKER_ENV: &str = "WM_BENCH_WORKER";

fn options() -> Options {
    Options {
        capacities: Capacities {
            generations: 64,
            workers: 1100,
            events: 1024,
        },
        ..Options::default()
    }
}

struct Fixture {
    registry: Registry,
    generation: u64,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A registry whose `history` past generations have come and gone (each started
/// and ended a worker), with `workers` live worker processes in the current one.
fn fixture(workers: usize, history: usize) -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("wm-bench-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let path = dir.path().join("registry.wm");
    let registry = Registry::open(&path, &options()).unwrap();
    for _ in 0..history {
        let g = registry
            .register_generation(&GenerationConfig::default(), |_| {})
            .unwrap();
        let w = registry.register_worker(g, 0, |_| {}).unwrap();
        registry.exit_worker(w, true, |_| {}).unwrap();
    }
    let generation = registry
        .register_generation(&GenerationConfig::default(), |_| {})
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let children = (0..workers)
        .map(|i| {
            Command::new(&exe)
                .env(WORKER_ENV, format!("{}:{generation}:{i}", path.display()))
                .spawn()
                .unwrap()
        })
        .collect();
    while registry.snapshot().unwrap().live(generation) < workers as u32 {
        std::thread::sleep(Duration::from_millis(5));
    }
    Fixture {
        registry,
        generation,
        children,
        _dir: dir,
    }
}

thread_local! {
    static FIXTURES: RefCell<HashMap<(usize, usize), Fixture>> = RefCell::new(HashMap::new());
}

/// Runs `f` on the fixture of that shape, built once and kept until `main` ends.
fn with_fixture<T>(workers: usize, history: usize, f: impl FnOnce(&Fixture) -> T) -> T {
    FIXTURES.with(|fixtures| {
        let mut fixtures = fixtures.borrow_mut();
        f(fixtures
            .entry((workers, history))
            .or_insert_with(|| fixture(workers, history)))
    })
}

#[divan::bench(args = [0, 1000])]
fn lock_unlock(bencher: Bencher, history: usize) {
    with_fixture(0, history, |f| {
        bencher.bench_local(|| f.registry.with_lock(|| ()).unwrap());
    });
}

#[divan::bench(args = [0, 1000])]
fn heartbeat(bencher: Bencher, history: usize) {
    with_fixture(0, history, |f| {
        let worker = f.registry.register_worker(f.generation, 0, |_| {}).unwrap();
        bencher.bench_local(|| f.registry.heartbeat(divan::black_box(&worker)).unwrap());
        f.registry.exit_worker(worker, true, |_| {}).unwrap();
    });
}

/// A worker's whole registration and exit, without a user callback, next to 8 live
/// workers of its generation (so a generation is not ended and started each time).
#[divan::bench(args = [0, 1000])]
fn worker_start_exit(bencher: Bencher, history: usize) {
    with_fixture(8, history, |f| {
        bencher.bench_local(|| {
            let w = f
                .registry
                .register_worker(f.generation, 99, |_| {})
                .unwrap();
            f.registry.exit_worker(w, true, |_| {}).unwrap();
        });
    });
}

/// A sweep over N live workers: counted per worker.
#[divan::bench(consts = [64, 1024], args = [0, 1000])]
fn sweep<const N: usize>(bencher: Bencher, history: usize) {
    with_fixture(N, history, |f| {
        bencher
            .counter(ItemsCount::new(N))
            .bench_local(|| f.registry.sweep(|_| {}).unwrap());
    });
}

fn worker_child(spec: &str) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut parts = spec.rsplitn(3, ':');
    let index: u32 = parts.next().unwrap().parse().unwrap();
    let generation: u64 = parts.next().unwrap().parse().unwrap();
    let path = parts.next().unwrap();
    let registry = Registry::open(Path::new(path), &options()).unwrap();
    let _worker = registry.register_worker(generation, index, |_| {}).unwrap();
    loop {
        std::thread::park();
    }
}

fn main() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker_child(&spec);
    }
    // Every fixture is built before anything is measured, so that no measurement
    // shares the machine with a thousand processes starting up.
    for workers in [0, 8, 64, 1024] {
        for history in [0, 1000] {
            with_fixture(workers, history, |_| ());
        }
    }
    divan::main();
    // Kills the worker processes and removes the registries.
    FIXTURES.with(|fixtures| fixtures.borrow_mut().clear());
}
