//! A recycled pid is never taken for the dead process that had it. One test binary
//! of its own, with one test: it steers the kernel's pid allocator.

mod common;

use std::fs;
use std::process::Command;

use common::{KillOnDrop, Probe, Scratch};
use worker_manager::{EventKind, Identity, Options, Registry};

/// Starts `sleep` with exactly `pid`, by setting the allocator's last pid (root) or,
/// failing that, by cycling through the pid space. Another process of the machine
/// may take the pid first; the setting is then tried again, a bounded number of times.
fn spawn_with_pid(pid: u32) -> KillOnDrop {
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for _ in 0..(pid_max * 2) {
        let _ = fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string());
        let child = KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap());
        if child.0.id() == pid {
            return child;
        }
    }
    panic!("could not get pid {pid} back from the kernel");
}

#[test]
fn a_recycled_pid_is_not_the_dead_process() {
    let scratch = Scratch::new();
    let registry = Registry::open(scratch.registry(), &Options::default()).unwrap();
    let g = registry
        .register_generation(&Default::default(), |_| {})
        .unwrap();
    let mut worker = Probe::spawn(&scratch.registry());
    worker.worker(g, 0);
    let dead = Identity::of(worker.pid).unwrap();
    worker.kill9();
    // A start time has the resolution of a clock tick (10 ms): a pid recycled within
    // the same tick would be indistinguishable. Without steering the allocator that
    // is impossible (the whole pid space would have to be used up in 10 ms); here the
    // allocator is steered, so let a few ticks pass first.
    std::thread::sleep(std::time::Duration::from_millis(50));

    let _impostor = spawn_with_pid(dead.pid);
    assert!(
        !dead.is_alive(),
        "a process with the same pid but another start time"
    );
    assert!(Identity::of(dead.pid).unwrap().is_alive());

    let mut crashes = Vec::new();
    registry
        .sweep(|e| {
            if e.kind() == EventKind::WorkerCrash {
                crashes.push(*e)
            }
        })
        .unwrap();
    assert_eq!(crashes.len(), 1);
    assert_eq!(crashes[0].worker().unwrap().pid, dead.pid);
    assert_eq!(registry.snapshot().unwrap().live(g), 0);
}
